"""Runs inside the scipy image (tests/test_images.py): each package of the data-science set does one small real
thing. Prints one JSON object."""
import json, tempfile
import numpy as np
import pandas as pd
out = {}
work = tempfile.mkdtemp()
from numba import njit
@njit
def total(a):
    s = 0.0
    for x in a:
        s += x
    return s
out["numba"] = total(np.arange(10.0))
import numexpr, bottleneck
out["numexpr"] = float(numexpr.evaluate("sum(a * 2)", {"a": np.arange(4.0)}))
out["bottleneck"] = float(bottleneck.nanmean(np.array([1.0, np.nan, 3.0])))
import dask.array as da
out["dask"] = int(da.ones((100, 100), chunks=10).sum().compute())
from distributed import Client, LocalCluster
with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
        Client(cluster) as client:
    out["distributed"] = client.submit(lambda x: x + 1, 41).result()
import cloudpickle, dill
out["pickles"] = cloudpickle.loads(cloudpickle.dumps(lambda x: x * 2))(2) + dill.loads(dill.dumps(lambda: 1))()
df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
df.to_parquet(f"{work}/t.parquet")
out["pyarrow"] = pd.read_parquet(f"{work}/t.parquet").equals(df)
import h5py
with h5py.File(f"{work}/t.h5", "w") as f:
    f["a"] = np.arange(3)
with h5py.File(f"{work}/t.h5") as f:
    out["h5py"] = f["a"][()].tolist()
df.to_hdf(f"{work}/t2.h5", key="df", format="table")  # pandas through pytables
out["tables"] = pd.read_hdf(f"{work}/t2.h5", "df").equals(df)
import sqlalchemy
engine = sqlalchemy.create_engine("sqlite://")
df.to_sql("t", engine)
with engine.connect() as conn:
    out["sqlalchemy"] = conn.execute(sqlalchemy.text("select count(*) from t")).scalar()
df.to_excel(f"{work}/t.xlsx", index=False)  # openpyxl
out["openpyxl"] = pd.read_excel(f"{work}/t.xlsx").equals(df)
import xlrd
out["xlrd"] = xlrd.__version__ >= "2"
import sympy
x = sympy.Symbol("x")
out["sympy"] = str(sympy.integrate(x ** 2, x))
import skimage.filters
out["skimage"] = float(skimage.filters.sobel(np.ones((5, 5))).sum())
from bokeh.plotting import figure
from bokeh.embed import file_html
from bokeh.resources import INLINE
p = figure()
p.line([1, 2], [3, 4])
out["bokeh"] = "<html" in file_html(p, INLINE, "t").lower()
import altair as alt
out["altair"] = alt.Chart(df).mark_point().encode(x="a").to_dict()["mark"]["type"]
from bs4 import BeautifulSoup
out["bs4"] = BeautifulSoup("<p>hi</p>", "html.parser").p.text
from google.protobuf import descriptor_pb2
out["protobuf"] = descriptor_pb2.FileDescriptorProto(name="t").name
import ipywidgets
out["ipywidgets"] = ipywidgets.IntSlider(value=3).value
import matplotlib
matplotlib.use("module://ipympl.backend_nbagg")
import matplotlib.pyplot as plt
out["ipympl"] = type(plt.figure().canvas).__name__
import jupyterlab_git, jupyterlab_widgets, widgetsnbextension, patsy
out["extensions"] = True
print(json.dumps(out))
