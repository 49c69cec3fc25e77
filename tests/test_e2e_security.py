"""End to end, security: attacks run against the session's droplet (see tests/test_e2e.py)."""
import gzip
import json
import subprocess

import pytest

from appliance import layout
from appliance.server import authd
from helpers import DROPLET, PASSWORD, in_droplet, provision

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

# item 1
# A burst of wrong guesses from one address, sent from inside the droplet to its nginx (the source
# addresses are loopback aliases, so nginx's $remote_addr is what the verifier counts). Parameters,
# the password among them, arrive on stdin, never on a command line.
BURST = r"""
import base64, http.client, json, os, ssl, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
p = json.loads(sys.stdin.read())
ctx = ssl.create_default_context(cafile=p["ca"])

def status(source, password):
    conn = http.client.HTTPSConnection("127.0.0.1", 443, context=ctx, source_address=(source, 0), timeout=120)
    try:
        token = base64.b64encode(f"{p['user']}:{password}".encode()).decode()
        conn.request("GET", "/api/status", headers={"Authorization": "Basic " + token})
        return conn.getresponse().status
    finally:
        conn.close()

def cpu(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

assert status("127.0.0.30", "warm-up guess") == 401  # the verifier is socket-activated: now it runs
pid = subprocess.run(["systemctl", "show", "-p", "MainPID", "--value", p["service"]],
                     capture_output=True, text=True, check=True).stdout.strip()
before = cpu(pid)
single = status("127.0.0.30", "one wrong guess")
per_check = cpu(pid) - before
before = cpu(pid)
with ThreadPoolExecutor(p["n"] + 1) as pool:
    burst = [pool.submit(status, "127.0.0.31", f"burst guess {i}") for i in range(p["n"])]
    time.sleep(1)
    same = pool.submit(status, "127.0.0.31", p["password"])
    started = time.monotonic()
    other = status("127.0.0.32", p["password"])
    latency = time.monotonic() - started
    statuses = [f.result() for f in burst]
print(json.dumps({"statuses": statuses, "same": same.result(), "other": other, "single": single,
                  "per_check_cpu": per_check, "burst_cpu": cpu(pid) - before, "other_latency": latency}))
"""


def test_a_burst_of_guesses_from_one_address_stays_bounded(appliance):
    n = 60
    params = {"ca": layout.CA_CERT, "user": "ds", "password": PASSWORD, "n": n, "service": layout.AUTH_SERVICE}
    r = subprocess.run(["docker", "exec", "-i", DROPLET, "python3", "-c", BURST], input=json.dumps(params),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout)
    print(f"burst of {n} in the droplet: {json.dumps(result)}")
    statuses = result["statuses"]
    assert result["single"] == 401
    assert statuses.count(401) <= authd.FAIL_LIMIT and statuses.count(429) == n - statuses.count(401), statuses
    assert result["same"] == 429  # the right password from the guessing address, while its guesses are in flight
    assert result["other"] == 200  # another address is let in meanwhile
    # bcrypt work stayed bounded: at most the limit's checks (plus the other login and slack), not n
    assert result["burst_cpu"] <= (authd.FAIL_LIMIT + 3) * result["per_check_cpu"] + 1, result


# item 5 ------------------------------------------------------------------------------------------------
# The notebook user swaps directories of its notebooks for symlinks to /etc and the TLS directory while
# `backup` walks them as root on the server: no archive may hold a byte of what they point to.


def test_backup_with_a_racing_symlink_swap_copies_no_host_file(appliance, tmp_path):
    home = "/home/ds"
    notebooks = layout.notebooks_dir("ds")
    host_files = {"/etc/shadow": in_droplet("cat", "/etc/shadow").encode(),
                  layout.TLS_KEY: in_droplet("cat", layout.TLS_KEY).encode()}
    pairs = [(f"{notebooks}/race-etc", "/etc", "shadow"),
             (f"{notebooks}/race-tls", layout.TLS_DIR, layout.TLS_KEY.rsplit("/", 1)[1])]
    setup = " && ".join(f"mkdir -p {d} && echo harmless > {d}/{name}" for d, _, name in pairs)
    swap = "; ".join(f"mv -T {d} {home}/.parked-{i} && ln -sT {target} {d}"
                     for i, (d, target, _) in enumerate(pairs))
    back = "; ".join(f"rm -f {d} && mv -T {home}/.parked-{i} {d}" for i, (d, _, _) in enumerate(pairs))
    in_droplet("su", "ds", "-s", "/bin/sh", "-c", setup)
    racer = subprocess.Popen(["docker", "exec", "-u", "ds", DROPLET, "sh", "-c",
                               f"end=$(($(date +%s) + 240)); while [ $(date +%s) -lt $end ] && "
                               f"[ ! -e {home}/.race-stop ]; do {swap}; {back}; done"])
    made = 0
    try:
        for i in range(8):
            archive = tmp_path / f"race-{i}.tar.gz"
            r, _ = provision("backup", "--out", str(archive), env=appliance["env"])
            if r.returncode == 0:
                made += 1
                raw = gzip.decompress(archive.read_bytes())
                for path, data in host_files.items():
                    assert data not in raw, f"backup {i} holds {path}"
    finally:
        in_droplet("su", "ds", "-s", "/bin/sh", "-c", f"touch {home}/.race-stop")
        racer.wait(60)
        in_droplet("sh", "-c", f"rm -rf {home}/.race-stop {home}/.parked-* " + " ".join(d for d, _, _ in pairs))
    assert made >= 4  # the swaps did not simply make every backup fail
