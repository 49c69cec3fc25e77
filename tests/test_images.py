"""The notebook images, built for real and checked from the inside."""
import json
import os
import time

import pytest

from appliance import images

pytestmark = pytest.mark.docker

IMPORT_ALL = r"""
import importlib, importlib.metadata, json, sys
failed, checked = {}, []
for dist in importlib.metadata.distributions():
    top = (dist.read_text("top_level.txt") or "").split()
    if not top:  # no top_level.txt: the packages named in RECORD
        top = sorted({f.parts[0] for f in dist.files or () if f.suffix == ".py" and len(f.parts) > 1
                      and not f.parts[0].endswith((".dist-info", ".data")) and f.parts[0] != ".."})
    for module in top:
        if module.startswith("_") and module != "_cffi_backend":
            continue
        try:
            importlib.import_module(module)
            checked.append(module)
        except Exception as exc:
            failed[module] = repr(exc)
print(json.dumps({"failed": failed, "checked": checked}))
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

FAST_HEALTH = {"test": ["CMD", "/opt/venv/bin/python", "/opt/appliance/healthcheck.py"],
               "interval": 1_000_000_000, "timeout": 5_000_000_000, "retries": 60, "start_period": 0}


def run_python(containers, image, code, **kwargs):
    c = containers(image, ["python", "-c", code], entrypoint=[], **kwargs)
    result = c.wait(timeout=300)
    out = c.logs(stdout=True, stderr=False).decode()
    assert result["StatusCode"] == 0, c.logs().decode()[-3000:]
    return out


def wait_healthy(container, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        container.reload()
        status = container.attrs["State"].get("Health", {}).get("Status")
        if status == "healthy":
            return
        assert container.status in ("created", "running"), container.logs().decode()[-3000:]
        time.sleep(1)
    raise AssertionError(f"not healthy: {container.logs().decode()[-3000:]}")


def test_manifest_label_matches_file_and_lists_the_stack(scipy_image, containers):
    manifest = images.manifest("scipy")
    inside = json.loads(run_python(containers, scipy_image, f"print(open({images.MANIFEST_PATH!r}).read())"))
    assert {k: manifest[k] for k in ("python", "packages", "base_image")} == inside
    for name in ("jupyterlab", "jupyter_server", "ipykernel", "numpy", "pandas", "scipy", "scikit-learn",
                 "matplotlib", "seaborn", "statsmodels", "nltk"):
        assert name in manifest["packages"], name
    assert manifest["python"].startswith("3.11")
    assert manifest["base_image"].startswith("appliance/base:latest")
    assert "numpy==" in images.format_manifest(manifest)


def test_every_package_imports(scipy_image, containers):
    result = json.loads(run_python(containers, scipy_image, IMPORT_ALL, environment={"MPLBACKEND": "Agg"}))
    assert result["failed"] == {}
    assert {"numpy", "pandas", "sklearn", "statsmodels", "nltk", "jupyterlab"} <= set(result["checked"])


def test_kernel_executes_code(scipy_image, containers):
    assert run_python(containers, scipy_image, KERNEL).strip() == "42"


def test_runs_as_uid_1000_healthy_and_writes_mounted_notebooks(scipy_image, containers, tmp_path):
    notebooks = tmp_path / "nb"
    notebooks.mkdir()
    os.chown(notebooks, 1000, 1000)
    c = containers(scipy_image, volumes={str(notebooks): {"bind": "/home/ds/notebooks", "mode": "rw"}},
                   healthcheck=FAST_HEALTH)
    wait_healthy(c)
    assert c.top()["Processes"], "no process"
    uids = c.exec_run(["sh", "-c", "id -u; stat -c %u /proc/1"]).output.decode().split()
    assert uids == ["1000", "1000"]
    assert c.exec_run(["sh", "-c", "echo hello > /home/ds/notebooks/made-inside.txt"]).exit_code == 0
    assert (notebooks / "made-inside.txt").stat().st_uid == 1000
    listen = c.exec_run(["cat", "/proc/net/tcp", "/proc/net/tcp6"]).output.decode().splitlines()
    assert not [line for line in listen if line.split()[3:4] == ["0A"]], "Jupyter must not listen on TCP"


def test_works_under_another_uid(scipy_image, containers, tmp_path):
    """Ubuntu's first user is 1000 already: the host user may be 1001."""
    notebooks = tmp_path / "nb"
    notebooks.mkdir()
    os.chown(notebooks, 1001, 1001)
    c = containers(scipy_image, user="1001:1001", healthcheck=FAST_HEALTH,
                   volumes={str(notebooks): {"bind": "/home/ds/notebooks", "mode": "rw"}})
    wait_healthy(c)
    assert c.exec_run(["sh", "-c", "echo x > /home/ds/notebooks/f && id -u"]).output.decode().strip() == "1001"
    assert (notebooks / "f").stat().st_uid == 1001


def test_extra_package_is_a_small_last_layer(scipy_image, docker_client):
    before = docker_client.images.get(scipy_image).id
    try:
        started = time.monotonic()
        images.build("scipy", ca_bundle="/etc/ssl/certs/ca-certificates.crt", packages=("tabulate==0.9.0",),
                     say=lambda m: None)
        print(f"one-package rebuild: {time.monotonic() - started:.1f} s")
        assert images.manifest("scipy")["packages"]["tabulate"] == "0.9.0"
        history = docker_client.api.history(images.tag("scipy"))
        extra = next(layer for layer in history if "EXTRA_PACKAGES" in layer["CreatedBy"] and layer["Size"] > 0)
        assert extra["Size"] < 10_000_000, extra
    finally:  # back to the plain image, from the cache
        images.build("scipy", ca_bundle="/etc/ssl/certs/ca-certificates.crt", say=lambda m: None)
    assert docker_client.images.get(scipy_image).id == before


def test_unknown_image_and_bad_package_are_clear_errors():
    with pytest.raises(images.ImageError, match="unknown image"):
        images.build("nope")
    with pytest.raises(images.ImageError, match="package requirement"):
        images.build("scipy", packages=("numpy; rm -rf /",))
