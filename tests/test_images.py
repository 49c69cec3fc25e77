"""The notebook images, built for real and checked from the inside."""
import io
import json
import os
import re
import time
from pathlib import Path

import pytest

from appliance import cli, images, layout

pytestmark = pytest.mark.docker

# Imports every top-level module of the distributions named in argv[1], in one process.
IMPORT_ALL = r"""
import importlib, importlib.metadata, json, sys

def modules(dist):
    top = (dist.read_text("top_level.txt") or "").split()
    if top:
        return top
    found = set()  # no top_level.txt (not built by setuptools): the modules named in RECORD
    for f in dist.files or ():
        head = f.parts[0]
        if head in ("..", "__pycache__") or head.endswith((".dist-info", ".data")):
            continue
        if len(f.parts) > 1 and f.suffix == ".py":
            found.add(head)
        elif len(f.parts) == 1 and f.suffix in (".py", ".so"):
            found.add(head.split(".")[0])
    return sorted(found)

result = {"imported": [], "failed": {}, "no_module": []}
for name in json.loads(sys.argv[1]):
    top = modules(importlib.metadata.distribution(name))
    if not top:
        result["no_module"].append(name)
    for module in top:
        try:
            importlib.import_module(module)
            result["imported"].append(module)
        except Exception as exc:
            result["failed"][f"{name}: {module}"] = repr(exc)
print(json.dumps(result))
"""

KERNEL = r"""
from jupyter_client.manager import start_new_kernel
km, kc = start_new_kernel(kernel_name="python3")
try:
    msg_id = kc.execute("6*7")
    while True:
        msg = kc.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "execute_result":
            print(msg["content"]["data"]["text/plain"])
            break
finally:
    kc.stop_channels()
    km.shutdown_kernel(now=True)
"""

SECOND = 1_000_000_000
FAST_HEALTH = {"test": ["CMD", "/opt/venv/bin/python", "-s", "/opt/appliance/healthcheck.py"],
               "interval": SECOND, "timeout": 5 * SECOND, "retries": 60, "start_period": 0}
SCIPY_STACK = ("numpy", "pandas", "scipy", "scikit-learn", "matplotlib", "seaborn", "statsmodels", "nltk",
               "ipywidgets", "ipympl", "dask", "distributed", "numba", "pyarrow", "jupyterlab-git")
NOTEBOOKS = "/home/ds/notebooks"
# The module each requested distribution is imported as, where the two names differ.
MODULES = {"scikit-learn": "sklearn", "scikit-image": "skimage", "beautifulsoup4": "bs4",
           "protobuf": "google.protobuf"}
WORKSPACE = (Path(__file__).resolve().parent / "scipy_workspace.py").read_text()


def requested(name):
    """The distributions images/<name>/requirements.in asks for, by canonical name (as the manifest has them)."""
    names = []
    for line in (images.IMAGES / name / "requirements.in").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.append(re.sub(r"[-_.]+", "-", re.split(r"[=<>!~\[; ]", line)[0]).lower())
    return names


def run_python(containers, image, code, *args, **kwargs):
    c = containers(image, ["python", "-c", code, *args], entrypoint=[], **kwargs)
    result = c.wait(timeout=300)
    assert result["StatusCode"] == 0, c.logs().decode()[-3000:]
    return c.logs(stdout=True, stderr=False).decode()


def wait_healthy(container, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        container.reload()
        if container.attrs["State"].get("Health", {}).get("Status") == "healthy":
            return
        assert container.status in ("created", "running"), container.logs().decode()[-3000:]
        time.sleep(1)
    raise AssertionError(f"not healthy: {container.logs().decode()[-3000:]}")


def notebooks_dir(tmp_path, uid):
    path = tmp_path / "notebooks"
    path.mkdir()
    os.chown(path, uid, uid)
    return {str(path): {"bind": NOTEBOOKS, "mode": "rw"}}, path


@pytest.mark.parametrize("name", ["base", "scipy"])
def test_manifest_label_matches_file(built_images, containers, name):
    manifest = images.manifest(name)
    inside = json.loads(run_python(containers, built_images[name], f"print(open({images.MANIFEST_PATH!r}).read())"))
    assert {key: manifest[key] for key in inside} == inside
    assert manifest["python"].startswith("3.11.")
    assert manifest["base_image"].startswith(f"{images.ROOT_IMAGE} (sha256:")
    parent = images.PARENTS[name]
    assert manifest["parent_image"].startswith(f"{images.tag(parent) if parent in images.PARENTS else parent} (")
    assert {"jupyterlab", "jupyter-server", "ipykernel", "pip"} <= set(manifest["packages"])
    assert manifest["packages"]["jupyterlab"].startswith("4.")
    assert manifest["packages"]["jupyter-server"].startswith("2.")
    assert (set(SCIPY_STACK) <= set(manifest["packages"])) == (name == "scipy")
    text = images.format_manifest(manifest)
    assert f"jupyterlab=={manifest['packages']['jupyterlab']}" in text and manifest["parent_image"] in text


def test_every_package_in_the_manifest_imports(built_images, containers):
    packages = images.manifest("scipy")["packages"]
    result = json.loads(run_python(containers, built_images["scipy"], IMPORT_ALL, json.dumps(sorted(packages)),
                                   environment={"MPLBACKEND": "Agg"}))
    print("no importable module:", result["no_module"])
    assert result["failed"] == {}
    assert {"numpy", "pandas", "scipy", "sklearn", "matplotlib", "seaborn", "statsmodels", "nltk",
            "jupyterlab", "jupyter_server", "ipykernel"} <= set(result["imported"])
    assert len(result["no_module"]) <= 3, result["no_module"]  # e.g. typing stubs: nothing to import


def test_kernel_executes_code(built_images, containers):
    assert run_python(containers, built_images["scipy"], KERNEL).strip() == "42"


def test_runs_as_uid_1000_on_a_unix_socket_and_writes_mounted_notebooks(built_images, containers, tmp_path):
    volumes, notebooks = notebooks_dir(tmp_path, 1000)
    c = containers(built_images["scipy"], volumes=volumes, healthcheck=FAST_HEALTH)
    wait_healthy(c)
    out = c.exec_run(["sh", "-c", "id -u; id -g; stat -c %u /proc/1; cat /proc/1/comm; "
                                  "stat -c %a /run/jupyter/jupyter.sock"]).output.decode().split()
    assert out == ["1000", "1000", "1000", "tini", "660"]
    assert c.exec_run(["sh", "-c", f"echo hello > {NOTEBOOKS}/made-inside.txt"]).exit_code == 0
    assert (notebooks / "made-inside.txt").stat().st_uid == 1000
    listen = c.exec_run(["cat", "/proc/net/tcp", "/proc/net/tcp6"]).output.decode().splitlines()
    assert not [line for line in listen if line.split()[3:4] == ["0A"]], "Jupyter must not listen on TCP"


def test_works_under_another_uid(built_images, containers, tmp_path):
    """Ubuntu's first user is 1000 already: the host user may be 1001."""
    volumes, notebooks = notebooks_dir(tmp_path, 1001)
    c = containers(built_images["scipy"], user="1001:1001", healthcheck=FAST_HEALTH, volumes=volumes)
    wait_healthy(c)
    assert c.exec_run(["sh", "-c", f"echo x > {NOTEBOOKS}/f && id -u"]).output.decode().strip() == "1001"
    assert (notebooks / "f").stat().st_uid == 1001
    kernel = c.exec_run(["python", "-c", KERNEL])
    assert kernel.output.decode().strip().endswith("42"), kernel.output.decode()[-2000:]


def test_extra_package_is_a_small_last_layer(built_images, docker_client):
    plain = docker_client.images.get(built_images["scipy"]).id
    shown = io.StringIO()
    try:
        started = time.monotonic()
        images.build("scipy", packages=("tabulate==0.9.0",), progress=images.Progress(shown),
                     say=lambda msg: None)
        print(f"one-package rebuild: {time.monotonic() - started:.1f} s")
        extra = docker_client.images.get(built_images["scipy"]).id
        assert images.manifest("scipy")["packages"]["tabulate"] == "0.9.0"
        history = docker_client.api.history(extra)
        layers = [layer for layer in history if layer["Size"] > 0]
        assert "EXTRA_PACKAGES=tabulate==0.9.0" in layers[0]["CreatedBy"], layers[0]
        assert layers[0]["Size"] < 5_000_000, layers[0]
        assert "[scipy] step 1/" in shown.getvalue() and "\r" not in shown.getvalue()
    finally:  # back to the plain image, from the cache
        images.build("scipy", say=lambda msg: None)
    assert docker_client.images.get(built_images["scipy"]).id == plain
    docker_client.images.remove(extra)


def test_failed_step_is_one_line_error_with_the_log_tail(built_images):
    shown = io.StringIO()
    with pytest.raises(images.ImageError, match=r"^building scipy failed: .*returned a non-zero code") as failed:
        images.build("scipy", packages=("tabulate==0.0.1",), progress=images.Progress(shown),
                     say=lambda msg: None)
    assert "\n" not in str(failed.value)
    assert "No matching distribution found for tabulate==0.0.1" in shown.getvalue()


def test_unknown_image_and_bad_packages_are_clear_errors():
    with pytest.raises(images.ImageError, match="unknown image 'nope'; known: base, scipy"):
        images.build("nope")
    for bad in ("numpy; rm -rf /", "numpy>2", "numpy==1.*", "$(reboot)", "-e.", "numpy==1 2"):
        with pytest.raises(images.ImageError, match="package requirement"):
            images.build("scipy", packages=(bad,))
    with pytest.raises(images.ImageError, match="not built here"):
        images.manifest("appliance/never-built:latest")


def test_every_requested_package_imports_in_the_scipy_image(built_images, containers):
    names = requested("scipy")
    assert {"ipywidgets", "ipympl", "dask", "distributed", "jupyterlab-git", "tables", "pyarrow"} <= set(names)
    modules = [MODULES.get(name, name.replace("-", "_")) for name in names]
    code = ("import importlib, json, sys; failed = {}\nfor m in json.loads(sys.argv[1]):\n    try:\n"
            "        importlib.import_module(m)\n    except Exception as exc:\n        failed[m] = repr(exc)\n"
            "print(json.dumps(failed))")
    failed = json.loads(run_python(containers, built_images["scipy"], code, json.dumps(modules),
                                   environment={"MPLBACKEND": "Agg"}))
    assert failed == {}


def test_the_scipy_set_works(built_images, containers):
    """Each package does one small real thing: numba compiles, dask and distributed compute, the file formats
    round-trip, ipympl makes its canvas..."""
    out = json.loads(run_python(containers, built_images["scipy"], WORKSPACE).strip().splitlines()[-1])
    assert out == {"numba": 45.0, "numexpr": 12.0, "bottleneck": 2.0, "dask": 10000, "distributed": 42, "pickles": 5,
                   "pyarrow": True, "h5py": [0, 1, 2], "tables": True, "sqlalchemy": 3, "openpyxl": True,
                   "xlrd": True, "sympy": "x**3/3", "skimage": 0.0, "bokeh": True, "altair": "point", "bs4": "hi",
                   "protobuf": "t", "ipywidgets": 3, "ipympl": "Canvas", "extensions": True}


def test_images_lists_every_requested_package(built_images, capsys):
    manifest = images.manifest("scipy")
    assert manifest["packages"]["dask"] == manifest["packages"]["distributed"] == "2026.8.0"
    assert cli.run(["images", "--image", "scipy"]) == 0
    shown = capsys.readouterr().out
    for name in requested("scipy"):
        assert f"  {name}=={manifest['packages'][name]}\n" in shown, name


def test_jupyterlab_finds_the_widget_and_git_extensions_and_git(built_images, containers):
    c = containers(built_images["scipy"], ["sh", "-c", "git --version; git config --system --get-all safe.directory; "
                                           "jupyter server extension list 2>&1; jupyter labextension list 2>&1"],
                   entrypoint=[])
    assert c.wait(timeout=120)["StatusCode"] == 0, c.logs().decode()[-3000:]
    out = re.sub(r"\x1b\[[0-9;]*m", "", c.logs().decode())  # jupyter colours "enabled" and "OK"
    assert re.search(r"^git version 2\.", out, re.M) and re.search(r"^\*$", out, re.M)
    assert re.search(r"jupyterlab_git enabled", out) and re.search(r"nbdime enabled", out)
    for extension in ("@jupyter-widgets/jupyterlab-manager", "jupyter-matplotlib", "@jupyterlab/git"):
        assert re.search(rf"{re.escape(extension)} v\S+ enabled\s+OK", out), (extension, out[-3000:])


def test_pip_install_goes_to_the_mounted_user_base_and_never_reaches_the_server(built_images, containers, tmp_path):
    """As the appliance runs it (root with SETUID/SETGID only, read-only root filesystem, the package directory
    mounted): `pip install` with no flags lands in the mounted directory and imports in a new container; pip
    refuses another version of an image package; a .pth planted there runs in kernels, never in the entry point,
    the healthcheck (both root) or Jupyter Server."""
    packages = tmp_path / "notebook-packages"
    packages.mkdir()
    os.chown(packages, 1000, 1000)
    packages.chmod(0o700)
    run = {"user": "0:0", "environment": {"APPLIANCE_NB_UID": "1000", "APPLIANCE_NB_GID": "1000"},
           "cap_drop": ["ALL"], "cap_add": ["SETUID", "SETGID"], "security_opt": ["no-new-privileges"],
           "read_only": True, "tmpfs": {"/tmp": "mode=1777", "/run/jupyter": "mode=0755",
                                        layout.IMAGE_HOME: "uid=1000,gid=1000,mode=0700"},
           "volumes": {str(packages): {"bind": layout.IMAGE_USER_PACKAGES, "mode": "rw"}}}
    install = containers(built_images["scipy"], ["python", "-m", "pip", "install", "pyfiglet==1.0.4"], **run)
    assert install.wait(timeout=300)["StatusCode"] == 0, install.logs().decode()[-3000:]
    site = packages / "lib/python3.11/site-packages"
    assert (site / "pyfiglet").is_dir() and (site / "pyfiglet").stat().st_uid == 1000
    other = containers(built_images["scipy"], ["python", "-m", "pip", "install", "numpy==2.3.5"], **run)
    assert other.wait(timeout=300)["StatusCode"] != 0
    assert "lack sys.path precedence to numpy" in other.logs().decode()
    (site / "zz-probe.pth").write_text("import os, sys; open('/tmp/pth-ran', 'a').write(' '.join(sys.orig_argv) + "
                                       "'\\n')\n")
    os.chown(site / "zz-probe.pth", 1000, 1000)
    c = containers(built_images["scipy"], healthcheck=FAST_HEALTH, **run)
    wait_healthy(c)
    time.sleep(2)  # a few more healthchecks, as root
    kernel = c.exec_run(["python", "-c", KERNEL], user="1000:1000")
    assert kernel.output.decode().strip().endswith("42"), kernel.output.decode()[-2000:]
    imported = c.exec_run(["python", "-c", "import pyfiglet, numpy; print(pyfiglet.__file__, numpy.__version__)"],
                          user="1000:1000").output.decode()
    assert imported.startswith(f"{layout.IMAGE_USER_PACKAGES}/lib/python3.11/site-packages/pyfiglet/"), imported
    assert imported.split()[-1] == images.manifest("scipy")["packages"]["numpy"]
    ran = c.exec_run(["cat", "/tmp/pth-ran"]).output.decode()
    assert "ipykernel_launcher" in ran, ran
    assert "start.py" not in ran and "healthcheck.py" not in ran, ran
    every = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done"
    server = c.exec_run(["sh", "-c", every]).output.decode()
    assert re.search(r"python -s /opt/appliance/start.py --serve", server), server
