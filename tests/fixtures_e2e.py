"""The session's local droplet for the end-to-end tests: made by a cold `up`, purged at the end."""
import json
import os
import threading
import time
from pathlib import Path

import pytest

from helpers import ARTIFACTS, PASSWORD, provision


class ArgvSampler(threading.Thread):
    """Reads every process's command line (the droplet's too: same kernel) while `up` runs."""

    def __init__(self):
        super().__init__(daemon=True)
        self.running, self.seen = True, set()

    def run(self):
        while self.running:
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    self.seen.add(cmdline.read_bytes().replace(b"\0", b" "))
                except OSError:
                    pass
            time.sleep(0.05)


@pytest.fixture(scope="session")
def appliance(docker_client, base_image, tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    env = {**os.environ, "APPLIANCE_STATE_DIR": str(state), "APPLIANCE_PASSWORD": PASSWORD}
    provision("down", "--purge", env=env)
    sampler = ArgvSampler()
    sampler.start()
    r, cold = provision("up", env=env)
    sampler.running = False
    assert r.returncode == 0, r.stdout[-4000:]
    timings = {"cold_up_s": round(cold, 1)}
    yield {"env": env, "state": state, "ca": str(state / "local" / "ca.crt"), "up": r.stdout,
           "timings": timings, "argv": sampler.seen}
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "e2e-timings.json").write_text(json.dumps(timings, indent=2))
    provision("down", "--purge", env=env)
