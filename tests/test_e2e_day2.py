"""Day-2 commands and reliability drills on the session's local droplet (after test_e2e.py).

Each drill records its recovery time in the session's timings (tests/artifacts/e2e-timings.json).
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from passlib.apache import HtpasswdFile

import jupyter_api
from appliance import layout
from helpers import DROPLET, PASSWORD, ROOT, URL, in_droplet, provision, rewrite_archive

pytestmark = [pytest.mark.e2e, pytest.mark.docker]
NOTEBOOKS = "/home/ds/notebooks"


def api(appliance, password=PASSWORD):
    return jupyter_api.session(appliance["ca"], "ds", password)


def wait_for_https(appliance, timeout):
    """Seconds until an authenticated /api/status answers 200 (fails after timeout)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if api(appliance).get(f"{URL}/api/status", timeout=5).status_code == 200:
                return round(time.monotonic() - started, 1)
        except requests.RequestException:
            pass
        time.sleep(0.5)
    pytest.fail(f"HTTPS did not come back within {timeout} s")


def pid1_start():
    """When the droplet's init started (clock ticks since the kernel booted): changes with every boot."""
    return in_droplet("python3", "-c", "print(open('/proc/1/stat').read().split()[21])")


def notebook_sums():
    return in_droplet("sh", "-c", f"cd {NOTEBOOKS} && find . -type f -print0 | sort -z | xargs -0r sha256sum")


def put_file(appliance, path, text):
    r = api(appliance).put(f"{URL}/api/contents/{path}", json={"type": "file", "format": "text", "content": text})
    assert r.status_code in (200, 201), r.text


def status(appliance):
    r, _ = provision("status", "--json", env=appliance["env"])
    return r.returncode, json.loads(r.stdout[r.stdout.index("{"):])


def test_status_reports_health(appliance):
    code, facts = status(appliance)
    assert code == 0 and facts["healthy"], facts["problems"]
    assert facts["container"]["state"] == "running" and facts["https"] == "login required"
    served = x509.load_pem_x509_certificate((Path(appliance["state"]) / "local" / "server.crt").read_bytes())
    assert facts["certificate"]["days_left"] > 300
    assert facts["certificate"]["sha256"].replace(":", "").lower() == served.fingerprint(hashes.SHA256()).hex()
    assert facts["image"]["manifest_sha256"] and facts["disks"][0]["free"] > 0
    r, _ = provision("status", env=appliance["env"])
    assert r.returncode == 0 and "healthy" in r.stdout.splitlines()[0]
    in_droplet("systemctl", "stop", "nginx")
    try:
        code, facts = status(appliance)
        assert code == 1 and "nginx is inactive" in facts["problems"]
    finally:
        in_droplet("systemctl", "start", "nginx")


def test_logs(appliance):
    r, _ = provision("logs", env=appliance["env"])
    assert r.returncode == 0 and "Jupyter Server" in r.stdout
    marker = f"logs-probe-{time.time_ns()}"
    follow = subprocess.Popen([sys.executable, str(ROOT / "provision.py"), "logs", "--service", "nginx", "--follow"],
                              env=appliance["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    seen = threading.Event()

    def read():
        for line in follow.stdout:
            if marker in line:
                seen.set()
    threading.Thread(target=read, daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        while not seen.is_set() and time.monotonic() < deadline:
            api(appliance).get(f"{URL}/api/{marker}")  # in the path: the access log leaves query strings out
            seen.wait(2)
        assert seen.is_set(), "the followed nginx log never showed the request"
    finally:
        os.killpg(follow.pid, signal.SIGINT)
        follow.wait(30)
    time.sleep(2)
    assert "tail -n 100 -f" not in in_droplet("ps", "-eo", "args")  # nothing left following on the server
    r, _ = provision("logs", "--service", "nginx", env=appliance["env"])
    assert marker in r.stdout and PASSWORD not in r.stdout


def test_passwd_takes_effect_at_once(appliance):
    old = api(appliance)
    assert old.get(f"{URL}/api/status").status_code == 200  # the verifier now remembers this login
    new_password = "a brand new passphrase"
    r, _ = provision("passwd", env={**appliance["env"], "APPLIANCE_PASSWORD": new_password})
    try:
        assert r.returncode == 0, r.stdout
        assert new_password not in r.stdout
        assert old.get(f"{URL}/api/status").status_code == 401
        assert api(appliance, new_password).get(f"{URL}/api/status").status_code == 200
        assert in_droplet("stat", "-c", "%a %U %G", "/etc/appliance/htpasswd").strip() == "640 root www-data"
    finally:
        r, _ = provision("passwd", env=appliance["env"])
    assert r.returncode == 0 and api(appliance).get(f"{URL}/api/status").status_code == 200


def test_a_password_file_changed_by_hand_ends_every_session(appliance):
    """Not only `passwd`: any change of the htpasswd on the server makes the path unit give nginx a new signing
    key, so a session cookie issued before is no login any more (without that unit it would stay good for its
    15 minutes: tests/test_nginx.py::test_a_new_htpasswd_ends_every_session_at_once)."""
    s = api(appliance)
    assert s.get(f"{URL}/api/status").status_code == 200
    cookie = s.cookies.get(layout.SESSION_COOKIE)

    def cookie_only():
        return requests.get(f"{URL}/api/status", headers={"Cookie": f"{layout.SESSION_COOKIE}={cookie}"},
                            verify=appliance["ca"], timeout=10).status_code

    assert cookie and cookie_only() == 200
    in_droplet("sh", "-c", f"printf '\\n' >> {layout.HTPASSWD}")  # by hand, and no password changes
    try:
        started = time.monotonic()
        while cookie_only() == 200:
            assert time.monotonic() - started < 10, "the session outlived a new htpasswd"
            time.sleep(0.05)
        print(f"\nsession ended {time.monotonic() - started:.2f} s after the htpasswd changed")
        assert api(appliance).get(f"{URL}/api/status").status_code == 200  # the password still lets in
    finally:
        in_droplet("truncate", "-s", "-1", layout.HTPASSWD)
    assert in_droplet("systemctl", "is-active", f"{layout.SESSION_SERVICE}.path").strip() == "active"


def test_drill_killed_notebook_server_comes_back(appliance):
    restarts = in_droplet("docker", "inspect", "-f", "{{.RestartCount}}", "jupyter").strip()
    pid = in_droplet("docker", "inspect", "-f", "{{.State.Pid}}", "jupyter").strip()
    in_droplet("kill", "-9", pid)
    seconds = wait_for_https(appliance, 60)
    appliance["timings"]["drill1_kill_recovery_s"] = seconds
    assert in_droplet("docker", "inspect", "-f", "{{.RestartCount}}", "jupyter").strip() != restarts
    assert seconds <= 30


def test_drill_droplet_reboot_keeps_notebooks(appliance):
    put_file(appliance, "before-reboot.txt", "still here")
    before, booted = notebook_sums(), pid1_start()
    started = time.monotonic()
    subprocess.run(["docker", "restart", "-t", "30", DROPLET], check=True, capture_output=True)
    waited = wait_for_https(appliance, 120)
    appliance["timings"]["drill2_reboot_recovery_s"] = round(time.monotonic() - started, 1)
    assert pid1_start() != booted  # it did boot
    assert notebook_sums() == before
    assert appliance["timings"]["drill2_reboot_recovery_s"] <= 90, waited


def test_drill_rebuild_with_an_open_notebook_and_a_running_kernel(appliance):
    text = json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    r = api(appliance).put(f"{URL}/api/contents/open.ipynb", json={"type": "notebook", "content": json.loads(text)})
    assert r.status_code in (200, 201), r.text
    session = api(appliance).post(f"{URL}/api/sessions", json={"path": "open.ipynb", "type": "notebook",
                                                                 "kernel": {"name": "python3"}})
    assert session.status_code == 201, session.text
    before = notebook_sums()
    size = int(in_droplet("docker", "image", "inspect", "-f", "{{.Size}}", "appliance/scipy:latest"))
    r, seconds = provision("rebuild", "--package", "tabulate==0.9.0", env=appliance["env"])
    assert r.returncode == 0, r.stdout[-4000:]
    sent = re.search(r"Image loaded on the server: ([\d.]+) (kB|MB) sent", r.stdout)
    sent_bytes = float(sent[1]) * (1e3 if sent[2] == "kB" else 1e6)
    appliance["timings"].update(rebuild_s=round(seconds, 1), rebuild_sent_bytes=sent_bytes, image_bytes=size)
    assert sent_bytes < size / 100  # only the new layer travelled
    assert notebook_sums() == before
    assert jupyter_api.execute(URL, appliance["ca"], "ds", PASSWORD, "import tabulate; tabulate.__version__") \
        == "'0.9.0'"
    r, _ = provision("up", env=appliance["env"])  # the package is remembered
    assert r.returncode == 0 and "changed=0" in r.stdout, r.stdout[-3000:]


def test_drill_interrupted_up_then_up_completes(appliance):
    # a file's mode changed by hand: the next `up` cannot take the no-op fast path and runs Ansible
    in_droplet("chmod", "0644", layout.HTPASSWD)
    proc = subprocess.Popen([sys.executable, str(ROOT / "provision.py"), "up"],
                            env=appliance["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    out = []
    for line in proc.stdout:
        out.append(line)
        if line.startswith("[task 4]"):
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl+C in a terminal does
            break
    out.append(proc.stdout.read())
    assert proc.wait(120) == 130, "".join(out)
    assert "Traceback" not in "".join(out)
    time.sleep(2)
    assert subprocess.run(["pgrep", "-f", "ansible-playbook"], capture_output=True).returncode == 1
    state = Path(appliance["state"]) / "local"
    assert not [p.name for p in state.iterdir() if p.name.startswith(".")]  # no temporary file left
    x509.load_pem_x509_certificate((state / "server.crt").read_bytes())
    load_pem_private_key((state / "server.key").read_bytes(), None)
    assert HtpasswdFile.from_path(str(state / "htpasswd")).check_password("ds", PASSWORD)
    r, seconds = provision("up", env=appliance["env"])
    assert r.returncode == 0, r.stdout[-3000:]
    appliance["timings"]["drill3_next_up_s"] = round(seconds, 1)
    assert in_droplet("stat", "-c", "%a", layout.HTPASSWD).strip() == "640"


def droplet_snapshot():
    return in_droplet("sh", "-c", "sha256sum /etc/appliance/*.py /etc/appliance/htpasswd /etc/appliance/tls/* "
                      "/etc/nginx/sites-available/* /etc/ssh/sshd_config.d/*; "
                      "docker inspect -f '{{.Image}} {{.State.StartedAt}}' jupyter")


@pytest.mark.parametrize("args, env, expected", [
    (["up", "--domain", "x.com; return 301 http://evil"], {}, "not a valid DNS name"),
    (["up", "--user", "a:b"], {}, "not a valid Linux user name"),
    (["up"], {"APPLIANCE_PASSWORD": ""}, "is empty"),
    (["up", "--image", "nope"], {}, "unknown image"),
    (["passwd"], {"APPLIANCE_PASSWORD": "short"}, "shorter than"),
    (["rebuild", "--package", "numpy; rm -rf /"], {}, "package requirement"),
], ids=["domain", "user", "empty password", "unknown image", "short new password", "package"])
def test_hostile_input_leaves_the_droplet_unchanged(appliance, args, env, expected):
    before = droplet_snapshot()
    r, _ = provision(*args, env={**appliance["env"], **env})
    assert r.returncode != 0 and expected in r.stdout and "Traceback" not in r.stdout, r.stdout[-2000:]
    assert droplet_snapshot() == before


def test_drill_nearly_full_disk(appliance):
    in_droplet("sh", "-c", "cp -a /etc/appliance /root/appliance-copy && "
               "mount -t tmpfs -o size=64m tmpfs /etc/appliance && cp -a /root/appliance-copy/. /etc/appliance/ && "
               "fallocate -l 61m /etc/appliance/filler")
    try:
        code, facts = status(appliance)
        assert code == 1 and any("disk nearly full: /etc/appliance" in p for p in facts["problems"])
        before = droplet_snapshot()
        r, seconds = provision("up", env=appliance["env"])
        appliance["timings"]["drill6_up_refused_s"] = round(seconds, 1)
        assert r.returncode != 0 and "nearly out of disk space: /etc/appliance" in r.stdout, r.stdout[-3000:]
        assert "Traceback" not in r.stdout and "PLAY" not in r.stdout
        assert droplet_snapshot() == before
    finally:
        in_droplet("sh", "-c", "umount /etc/appliance; rm -rf /root/appliance-copy")


def test_drill_backup_purge_up_restore(appliance, tmp_path):
    in_droplet("sh", "-c", f"mkdir -p '{NOTEBOOKS}/données/deep' && head -c 5000000 /dev/urandom > "
               f"'{NOTEBOOKS}/données/deep/data.bin' && echo 'print(1)' > '{NOTEBOOKS}/script.py' && "
               f"chown -R ds:ds {NOTEBOOKS}")
    before = notebook_sums()
    archive = tmp_path / "notebooks.tar.gz"
    r, seconds = provision("backup", "--out", str(archive), env=appliance["env"])
    assert r.returncode == 0, r.stdout
    assert archive.stat().st_mode & 0o777 == 0o600
    appliance["timings"]["backup_s"] = round(seconds, 1)

    corrupt = tmp_path / "corrupt.tar.gz"
    corrupt.write_bytes(rewrite_archive(archive.read_bytes(), lambda name, data: (
        name, b"X" + data[1:] if name.endswith("data.bin") else data)))
    r, _ = provision("restore", str(corrupt), env=appliance["env"])
    assert r.returncode != 0 and r.stdout.startswith("error:") and "checksums" in r.stdout, r.stdout
    assert notebook_sums() == before

    started = time.monotonic()
    assert provision("down", "--purge", env=appliance["env"])[0].returncode == 0
    r, _ = provision("up", env=appliance["env"])
    assert r.returncode == 0, r.stdout[-4000:]
    assert notebook_sums() == ""
    r, _ = provision("restore", str(archive), env=appliance["env"])
    assert r.returncode == 0, r.stdout
    appliance["timings"]["drill5_purge_up_restore_s"] = round(time.monotonic() - started, 1)
    assert notebook_sums() == before
    wait_for_https(appliance, 60)
    got = api(appliance).get(f"{URL}/api/contents/script.py", params={"content": 1})
    assert got.status_code == 200 and got.json()["content"] == "print(1)\n"
