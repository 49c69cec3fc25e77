"""Helpers the tests share: running provision.py, reaching the session's droplet, rewriting archives."""
import io
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from appliance import layout

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
DROPLET = "appliance-droplet"
URL = "https://127.0.0.1:8443"
PASSWORD = "e2e test password"


def provision(*args, env, timeout=2400):
    started = time.monotonic()
    r = subprocess.run([sys.executable, str(ROOT / "provision.py"), *args], env=env, text=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    print(r.stdout)
    return r, time.monotonic() - started


def in_droplet(*cmd):
    r = subprocess.run(["docker", "exec", DROPLET, *cmd], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def jupyter_started_at():
    return in_droplet("docker", "inspect", "-f", "{{.State.StartedAt}}", layout.CONTAINER).strip()


def rewrite_archive(archive, change):
    """The archive with change(name, data) -> (name, data) applied to each member."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as src, \
            tarfile.open(fileobj=out, mode="w:gz") as dst:
        for member in src:
            data = src.extractfile(member).read() if member.isfile() else None
            member.name, data = change(member.name, data)
            if data is not None:
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def wait_jupyter_healthy(timeout=120):
    """Seconds until the droplet's notebook container reports healthy again (fails after timeout)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if in_droplet("docker", "inspect", "-f", "{{.State.Health.Status}}", layout.CONTAINER).strip() == "healthy":
            return round(time.monotonic() - started, 1)
        time.sleep(1)
    raise AssertionError("the notebook container did not become healthy again")
