"""A Dask cluster on the session's local droplet: `up --workers 2` makes two worker droplets; a notebook
kernel's `Client()` reaches the scheduler with no arguments, over mutual TLS; the dashboard is behind the
login; a worker killed mid-computation does not change the answer; the same `up` again changes nothing;
`--workers 1` retires one; `--workers 0` takes the cluster away again (as the other tests expect)."""
import json
import socket
import subprocess
import threading
import time

import pytest
import requests

import jupyter_api
from helpers import ARTIFACTS, PASSWORD, URL, provision

pytestmark = pytest.mark.e2e
TIMINGS = {}

CONNECT = """
import json
from dask.distributed import Client
client = Client(timeout=60)
client.wait_for_workers({n}, timeout=180)
"""

SPREAD = CONNECT + """
import dask.array as da
from dask.distributed import wait
x = da.random.RandomState(0).random((4000, 4000), chunks=(500, 500)).persist()
wait(x)
holders = {{w for ws in client.who_has(x).values() for w in ws}}
json.dumps({{"workers": len(client.scheduler_info()["workers"]), "holders": len(holders),
             "sum": float(x.sum().compute()), "expected": float(x.compute().sum()),
             "address": client.scheduler.address}})
"""

# tasks of half a second each, 4 threads in all: about 10 s, long enough to kill a worker in the middle
SLOW = CONNECT + """
import time
def slow(i):
    time.sleep(0.5)
    return i * i
futures = client.map(slow, range(80), pure=False)
json.dumps({{"total": sum(client.gather(futures)), "expected": sum(i * i for i in range(80))}})
"""

NO_CERTIFICATE = """
import json, os
import dask
from dask.distributed import Client
from distributed.security import Security
address = os.environ["DASK_SCHEDULER_ADDRESS"]
tried = {}
# without the notebook's own certificate (its environment names it: the configuration is emptied first)
with dask.config.set({"distributed.comm.tls.client.cert": None, "distributed.comm.tls.client.key": None}):
    for name, target, security in [
            ("tls, the CA but no client certificate", address,
             Security(tls_ca_file="/etc/dask/ca.crt", require_encryption=True)),
            ("plain tcp", address.replace("tls://", "tcp://"), Security(require_encryption=False))]:
        try:
            Client(target, security=security, timeout=8).close()
            tried[name] = "connected"
        except Exception as exc:
            tried[name] = type(exc).__name__
json.dumps(tried)
"""

KILL_WORKER_PROCESS = r"""
import os, signal
for pid in os.listdir("/proc"):
    if not pid.isdigit() or int(pid) == os.getpid():  # (this script's own command line names them too)
        continue
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ")
    except OSError:
        continue
    if b"multiprocessing.spawn" in cmd or b"spawn_main" in cmd:
        os.kill(int(pid), signal.SIGKILL)
        print(pid)
"""


def address(container):
    return subprocess.run(["docker", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", container],
                          capture_output=True, text=True, check=True).stdout.strip()


def reaches(host, port):
    try:
        socket.create_connection((host, port), timeout=3).close()
        return True
    except OSError:
        return False


def run(appliance, code):
    return json.loads(jupyter_api.execute(URL, appliance["ca"], "ds", PASSWORD, code).strip("'"))


def droplet(name, *cmd):
    r = subprocess.run(["docker", "exec", name, *cmd], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def up(appliance, *args, timing):
    r, took = provision("up", *args, env=appliance["env"])
    assert r.returncode == 0, r.stdout[-4000:]
    TIMINGS[timing] = round(took, 1)
    return r.stdout


def test_cluster(appliance):
    try:
        out = up(appliance, "--workers", "2", "--worker-memory", "1g", timing="cluster_up_2_workers_s")
        assert "Dask worker local-2" in out

        spread = run(appliance, SPREAD.format(n=2))
        assert spread["workers"] == 2 and spread["holders"] == 2, spread  # both hold chunks
        assert spread["sum"] == pytest.approx(spread["expected"], rel=1e-9) and spread["address"].startswith("tls://")

        r, _ = provision("status", "--json", env=appliance["env"])
        facts = json.loads(r.stdout[r.stdout.index("{"):])
        workers = sorted(facts["dask_workers"], key=lambda w: w["name"])
        assert r.returncode == 0 and [w["name"] for w in workers] == ["local-1", "local-2"], facts["problems"]
        assert all(w["status"] == "running" and w["threads"] >= 1 for w in workers)
        assert all(10 ** 9 <= w["memory_limit"] <= 2 ** 30 for w in workers)  # --worker-memory 1g
        r, _ = provision("logs", "--service", "dask-worker", "--worker", "local-2", env=appliance["env"])
        assert r.returncode == 0 and "Registered to" in r.stdout, r.stdout[-2000:]

        refused = run(appliance, NO_CERTIFICATE)
        assert "connected" not in refused.values(), refused
        # the firewall: this machine (on the droplets' bridge, not a peer) reaches no Dask port
        assert reaches(address("appliance-droplet"), 8786) is False
        assert reaches(address("appliance-worker-1"), 8788) is False
        assert reaches(address("appliance-droplet"), 443) is True  # (the same way in, for a port that is open)

        dashboard = f"{URL}/dask/status"
        assert requests.get(dashboard, verify=appliance["ca"], timeout=30).status_code == 401
        s = jupyter_api.session(appliance["ca"], "ds", PASSWORD)
        page = s.get(dashboard, timeout=30)
        assert page.status_code == 200 and "Dask" in page.text

        # kill -9 one worker's process while the computation runs: the nanny starts a new one, the scheduler
        # runs the lost tasks again, and the answer is the same
        result, killed = {}, []
        thread = threading.Thread(target=lambda: result.update(run(appliance, SLOW.format(n=2))))
        thread.start()
        time.sleep(6)
        killed.append(droplet("appliance-worker-1", "python3", "-c", KILL_WORKER_PROCESS).split())
        thread.join(300)
        assert killed[0], "no worker process found to kill"
        assert result and result["total"] == result["expected"], result
        assert run(appliance, CONNECT.format(n=2) + "len(client.scheduler_info()['workers'])") == 2  # came back

        # a worker server that reboots rejoins by itself
        started = time.monotonic()
        subprocess.run(["docker", "restart", "appliance-worker-2"], check=True, capture_output=True, timeout=120)
        assert run(appliance, CONNECT.format(n=2) + "len(client.scheduler_info()['workers'])") == 2
        TIMINGS["worker_reboot_rejoin_s"] = round(time.monotonic() - started, 1)

        out = up(appliance, "--workers", "2", "--worker-memory", "1g", timing="cluster_second_up_s")
        assert out.count("changed=0") >= 1 and "Ready in" in out and "changed=0\n" in out.split("Ready in")[1]

        out = up(appliance, "--workers", "1", timing="cluster_retire_one_s")
        assert "Retiring the Dask worker(s) local-2" in out
        r, _ = provision("status", env=appliance["env"])
        assert r.returncode == 0 and "dask worker local-1: running" in r.stdout and "local-2" not in r.stdout
        assert run(appliance, CONNECT.format(n=1) + "len(client.scheduler_info()['workers'])") == 1
        names = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True).stdout
        assert "appliance-worker-2" not in names and "appliance-worker-1" in names
    finally:
        up(appliance, "--workers", "0", timing="cluster_remove_s")
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "e2e-cluster-timings.json").write_text(json.dumps(TIMINGS, indent=2))
    names = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True).stdout
    assert "appliance-worker-" not in names
    # the notebook container no longer has the cluster's client certificate or its settings (a container
    # kept with them could not even restart once the mount's source is gone)
    seen = json.loads(droplet("appliance-droplet", "docker", "inspect", "jupyter"))[0]
    assert not [m for m in seen["Mounts"] if "dask" in m["Source"] or "dask" in m["Destination"]], seen["Mounts"]
    assert not [v for v in seen["Config"]["Env"] if v.startswith("DASK_")], seen["Config"]["Env"]
