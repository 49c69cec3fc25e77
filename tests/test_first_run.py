"""The README's first command, run verbatim as a newcomer would, from nothing.

A fresh copy of the project in a temporary directory (what a clone gives: the
files git tracks plus new ones it does not ignore; no .venv, no .appliance), an
engine with no debian:bookworm-slim, no appliance image and no droplet (the
debootstrap tarball cache may stay), no APPLIANCE_* variable, no terminal, no
password file. The command is read from README.md, so the test follows it.
Runs first in the session (conftest.py) so that nothing was built before it.
"""
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from appliance import droplet, engine, images
from helpers import ROOT, URL

pytestmark = pytest.mark.e2e

PLAIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def readme_first_command():
    """The first line of the Quick start's code block, without its comment."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)[1]
    return block.splitlines()[0].split("#", 1)[0].strip()


def fresh_copy(dest):
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def forget_images_and_droplet():
    """What a fresh machine lacks: the droplet (and its volumes), every image the tool makes. An engine that
    is installed but stopped still holds them on disk: it is started to forget them, then stopped again, so
    the README's command has to start it itself, as a newcomer's would."""
    if not shutil.which("dockerd"):  # no engine at all: nothing to forget, the command installs it
        return
    client = engine._client()
    was_stopped = client is None
    if was_stopped:
        client = engine.client(install=True, say=lambda msg: None)
    droplet.down(purge=True, say=lambda msg: None)
    for ref in (droplet.IMAGE, *(images.tag(name) for name in images.PARENTS), images.ROOT_IMAGE):
        try:
            client.images.remove(ref, force=True)
        except Exception as exc:  # noqa: BLE001 - absent already
            if "No such image" not in str(exc):
                raise
    client.images.prune(filters={"dangling": True})
    assert not [i for i in client.images.list() if any(t.startswith(("appliance/", "debian:")) for t in i.tags)]
    if was_stopped:
        stop_engine()


def stop_engine():
    """Stop the engine the way appliance/engine.py started it (systemd, else the dockerd process)."""
    if os.path.isdir("/run/systemd/system") and shutil.which("systemctl"):
        subprocess.run(["systemctl", "stop", "docker.socket", "docker"], capture_output=True)
    else:
        os.kill(int(Path("/var/run/docker.pid").read_text()), signal.SIGTERM)
    deadline = time.monotonic() + 60
    while engine._client() is not None:
        assert time.monotonic() < deadline, "the Docker engine did not stop"
        time.sleep(1)


def newcomer_env():
    keep = ("HOME", "LANG", "LC_ALL", "TERM", "USER", "LOGNAME")
    return {**{k: v for k, v in os.environ.items() if k in keep}, "PATH": PLAIN_PATH}


def test_readme_first_command_works_from_nothing(tmp_path):
    command = readme_first_command()
    assert command.startswith("python3 provision.py up"), command
    project = fresh_copy(tmp_path / "project")
    forget_images_and_droplet()
    started = time.monotonic()
    try:
        r = subprocess.run(command, shell=True, cwd=project, env=newcomer_env(), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=2700)
        wall = time.monotonic() - started
        print(r.stdout)
        print(f"first run from nothing: {wall:.0f} s")
        assert r.returncode == 0, r.stdout[-4000:]
        assert "Traceback" not in r.stdout
        final = r.stdout[r.stdout.rindex("Ready in"):]
        # The final block says where to go, who to be, and where the password is.
        assert f"{URL}/" in final and "login:         ds" in final
        kept = Path(re.search(r"kept in (\S+?)\)", final)[1])
        password = kept.read_text()
        assert password in final  # shown in the final lines, not only in the middle of the log
        assert oct(kept.stat().st_mode & 0o777) == "0o600"
        assert r.stdout.count(password) == 1  # shown once
        ca = project / ".appliance" / "local" / "ca.crt"
        assert requests.get(f"{URL}/api/status", verify=ca, timeout=30).status_code == 401
        assert requests.get(f"{URL}/api/status", verify=ca, auth=("ds", password + "x"), timeout=30).status_code == 401
        ok = requests.get(f"{URL}/api/status", verify=ca, auth=("ds", password), timeout=30)
        assert ok.status_code == 200 and "started" in ok.json()
        # the steps that take long kept showing progress
        for long_step in ("debootstrap", "Building appliance/scipy", "Sending image"):
            assert long_step in r.stdout, long_step
    finally:
        subprocess.run(["python3", "provision.py", "down", "--purge"], cwd=project, env=newcomer_env(),
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=600)
