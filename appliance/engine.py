"""Making sure a Docker engine answers on this machine."""
import os
import shutil
import subprocess
import sys
import time

import docker

from . import bootstrap
from .errors import SetupError

DOCKERD_LOG = "/var/log/dockerd.log"


def _client():
    try:
        client = docker.from_env(timeout=600)
        client.ping()
        return client
    except Exception:
        return None


def _start_dockerd(say):
    if os.path.isdir("/run/systemd/system") and shutil.which("systemctl"):
        say("starting the Docker engine (systemctl start docker)")
        subprocess.run(["systemctl", "start", "docker"], capture_output=True)
        return
    say(f"starting the Docker engine in the background (dockerd, log in {DOCKERD_LOG})")
    with open(DOCKERD_LOG, "ab") as log:
        subprocess.Popen(["dockerd"], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                         start_new_session=True)


def client(install=False, say=lambda msg: print(msg, file=sys.stderr, flush=True)):
    """A docker client for an engine that answers.

    With install=True (the local droplet and the tests need an engine here), a
    missing engine is installed from Debian's docker.io and started, saying so.
    """
    found = _client()
    if found:
        return found
    if not install:
        raise SetupError("no Docker engine answers (is it running? is DOCKER_HOST right?)")
    if os.geteuid() != 0:
        raise SetupError("no Docker engine answers; start one (or run as root to let this tool "
                         "install and start Debian's docker.io)")
    if not shutil.which("dockerd"):
        say("no Docker engine answers on this machine: installing Debian's docker.io")
        bootstrap.apt_install(["docker.io"], "the local droplet")
    _start_dockerd(say)
    for _ in range(60):
        time.sleep(1)
        found = _client()
        if found:
            return found
    raise SetupError(f"the Docker engine did not start within 60 s; see {DOCKERD_LOG}")
