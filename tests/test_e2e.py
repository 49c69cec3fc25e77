"""End to end: `provision.py up` on a fresh local droplet, checked as a user would.

One droplet for the whole session (cold `up` once, then a no-op `up`).
"""
import hashlib
import json
import re
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

import jupyter_api
from appliance import layout
from helpers import ARTIFACTS, DROPLET, PASSWORD, URL, in_droplet, jupyter_started_at, provision

pytestmark = [pytest.mark.e2e, pytest.mark.docker]


def test_up_reports_how_to_log_in(appliance):
    out = appliance["up"]
    assert f"{URL}/" in out and "login:" in out
    assert PASSWORD not in out
    printed = re.search(r"SHA-256 ([0-9A-F:]{95})", out)[1]
    served = hashlib.sha256(ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(("127.0.0.1", 8443)))).hexdigest()
    assert printed.replace(":", "").lower() == served


def test_no_secret_on_any_command_line_during_up(appliance):
    argv = b"\n".join(appliance["argv"])
    assert b"ansible-playbook" in argv  # the sampler did see the run
    assert PASSWORD.encode() not in argv
    assert b"$2y$" not in argv and b"PRIVATE KEY" not in argv


def test_http_redirects_and_login_required(appliance):
    r = requests.get("http://127.0.0.1:8080/lab", allow_redirects=False)
    assert r.status_code == 308 and r.headers["Location"] == f"{URL}/lab"
    assert requests.get(f"{URL}/api/status", verify=appliance["ca"]).status_code == 401
    assert jupyter_api.session(appliance["ca"], "ds", "wrong password!").get(f"{URL}/api/status").status_code == 401
    assert jupyter_api.session(appliance["ca"], "ds", PASSWORD).get(f"{URL}/api/status").status_code == 200


def test_kernel_over_wss(appliance):
    assert jupyter_api.execute(URL, appliance["ca"], "ds", PASSWORD, "6*7") == "42"


def test_browser_runs_and_saves_a_notebook(appliance):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            # Our private CA is not in Chromium's store; test_up_reports_how_to_log_in checks the fingerprint.
            context = browser.new_context(http_credentials={"username": "ds", "password": PASSWORD},
                                          ignore_https_errors=True, viewport={"width": 1400, "height": 900})
            page = context.new_page()
            page.goto(f"{URL}/lab?reset", timeout=120_000)
            page.locator(".jp-LauncherCard[data-category='Notebook']").first.click(timeout=120_000)
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=120_000)
            page.locator(".jp-Cell .cm-content").first.click()
            page.keyboard.type("6*7")
            result = page.locator(".jp-OutputArea-output", has_text="42").first
            for _ in range(12):  # the kernel's websocket may connect after the status shows Idle
                page.keyboard.press("Control+Enter")
                try:
                    result.wait_for(timeout=5_000)
                    break
                except PlaywrightTimeout:
                    pass
            page.screenshot(path=str(ARTIFACTS / "jupyterlab.png"))
            result.wait_for(timeout=1_000)
            page.locator(".jp-NotebookPanel-toolbar [data-jp-item-name='save']").first.click()
            page.get_by_role("textbox", name="File name").fill("from-browser.ipynb")  # JupyterLab asks for a name on first save
            page.get_by_role("button", name="Rename and Save").click()
            page.locator(".jp-mod-dirty").wait_for(state="detached", timeout=30_000)
        finally:
            browser.close()
    content = json.loads(in_droplet("cat", "/home/ds/notebooks/from-browser.ipynb"))
    cell = content["cells"][0]
    assert "".join(cell["source"]) == "6*7"
    assert "".join(cell["outputs"][0]["data"]["text/plain"]) == "42"


def test_only_ssh_http_https_listen_outside(appliance):
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in in_droplet("cat", table).splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, port = local.rsplit(":", 1)
            if state == "0A" and not addr.startswith(("0100007F", "00000000000000000000000001000000")):
                ports.add(int(port, 16))
    assert ports <= {22, 80, 443} and {22, 80, 443} <= ports, ports


def nginx_started_at():
    return in_droplet("systemctl", "show", "-p", "ExecMainStartTimestampMonotonic", "nginx").strip()


def test_second_up_changes_nothing(appliance):
    before = jupyter_started_at(), nginx_started_at()
    fingerprint = (Path(appliance["state"]) / "local" / "server.crt").read_bytes()
    htpasswd = (Path(appliance["state"]) / "local" / "htpasswd").read_bytes()
    r, seconds = provision("up", env=appliance["env"])
    appliance["timings"]["noop_up_s"] = round(seconds, 1)
    assert r.returncode == 0, r.stdout[-4000:]
    assert "changed=0" in r.stdout
    assert "Ansible is not needed" in r.stdout and "PLAY" not in r.stdout  # the fast path (appliance/digest.py)
    assert (jupyter_started_at(), nginx_started_at()) == before
    assert (Path(appliance["state"]) / "local" / "server.crt").read_bytes() == fingerprint
    assert (Path(appliance["state"]) / "local" / "htpasswd").read_bytes() == htpasswd


def sha256_in_droplet(path):
    return in_droplet("sha256sum", path).split()[0]


# Drift the no-op fast path must not hide: each is made by hand on the server, the next `up` runs Ansible
# and repairs it. (what to do, the thing `up` names, how to tell it is repaired)
DRIFTS = [
    (["sh", "-c", f"echo '# edited by hand' >> {layout.NGINX_SITE}"], f"path {layout.NGINX_SITE}",
     lambda before: sha256_in_droplet(layout.NGINX_SITE) == before["site"]),
    (["chmod", "0644", layout.HTPASSWD], f"path {layout.HTPASSWD}",
     lambda before: in_droplet("stat", "-c", "%a", layout.HTPASSWD).strip() == "640"),
    (["systemctl", "stop", "nginx"], "unit nginx",
     lambda before: in_droplet("systemctl", "is-active", "nginx").strip() == "active"),
    (["apt-get", "remove", "-y", "-q", "unattended-upgrades"], "package unattended-upgrades",
     lambda before: in_droplet("dpkg-query", "-W", "-f", "${db:Status-Abbrev}", "unattended-upgrades").strip() == "ii"),
    (["docker", "stop", layout.CONTAINER], f"container {layout.CONTAINER}",
     lambda before: in_droplet("docker", "inspect", "-f", "{{.State.Health.Status}}", layout.CONTAINER).strip()
     == "healthy"),
]


def test_drift_falls_through_to_ansible_which_repairs_it(appliance):
    before = {"site": sha256_in_droplet(layout.NGINX_SITE)}
    for command, named, repaired in DRIFTS:
        in_droplet(*command)
        r, _ = provision("up", env=appliance["env"])
        assert r.returncode == 0, r.stdout[-4000:]
        assert "Running Ansible: the server differs from the last run" in r.stdout and named in r.stdout, r.stdout[-3000:]
        assert "changed=0\n" not in r.stdout.split("Ready in")[1], r.stdout[-2000:]
        assert repaired(before), (command, r.stdout[-2000:])
    r, seconds = provision("up", env=appliance["env"])  # repaired and recorded: the fast path again
    appliance["timings"]["noop_up_after_repairs_s"] = round(seconds, 1)
    assert r.returncode == 0 and "Ansible is not needed" in r.stdout and "changed=0" in r.stdout, r.stdout[-3000:]
    assert requests.get(f"{URL}/api/status", verify=appliance["ca"], auth=("ds", PASSWORD), timeout=30).status_code == 200


CONNECT = ("import socket; s = socket.socket(socket.AF_UNIX); s.connect('/run/jupyter/jupyter.sock'); "
           "s.sendall(b'GET /api/status HTTP/1.0\\r\\n\\r\\n'); print(s.recv(12).decode())")


def test_only_nginx_reaches_jupyter(appliance):
    in_droplet("sh", "-c", "id mallory >/dev/null 2>&1 || useradd --create-home mallory")
    r = subprocess.run(["docker", "exec", "-u", "mallory", DROPLET, "python3", "-c", CONNECT],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "PermissionError" in r.stderr, r.stdout + r.stderr
    assert in_droplet("setpriv", "--reuid=www-data", "--regid=www-data", "--init-groups",
                      "python3", "-c", CONNECT).startswith("HTTP/1.1 200")


def test_tls_policy_on_the_droplet(appliance):
    r = subprocess.run([sys.executable, "-m", "sslyze", "--mozilla_config=intermediate",
                        f"--certinfo_ca_file={appliance['ca']}", "127.0.0.1:8443"],
                       capture_output=True, text=True, timeout=300)
    assert "127.0.0.1:8443: OK - Compliant." in r.stdout, r.stdout[-3000:]


def test_notebook_container_is_hardened(appliance):
    c = json.loads(in_droplet("docker", "inspect", "jupyter"))[0]
    host = c["HostConfig"]
    # only what the entry point needs to bind the socket and become the notebook account (see below)
    assert host["CapDrop"] == ["ALL"] and sorted(host["CapAdd"]) == ["SETGID", "SETUID"]
    assert host["ReadonlyRootfs"] and set(host["Tmpfs"]) == {"/tmp", "/home/ds"}
    assert "no-new-privileges" in host["SecurityOpt"] and not host["Privileged"]
    assert host["Memory"] > 0 and host["PidsLimit"] > 0
    assert host["RestartPolicy"]["Name"] == "unless-stopped"
    assert not host["PortBindings"] and not c["NetworkSettings"]["Ports"]
    assert not any("docker.sock" in m["Source"] for m in c["Mounts"])
    account = in_droplet("id", "-u", "jupyter").strip()
    for pid in in_droplet("docker", "top", "jupyter", "-o", "pid").split()[1:]:  # every process, PID 1 too
        status = dict(line.split(":\t", 1) for line in in_droplet("cat", f"/proc/{pid}/status").splitlines()
                      if ":\t" in line)
        assert status["Uid"].split()[0] == account and status["Gid"].split()[0] != "0", (pid, status["Uid"])
        assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == 0 and status["NoNewPrivs"] == "1"
    assert c["State"]["Health"]["Status"] in ("healthy", "starting")
    assert in_droplet("docker", "info", "--format", "{{.LiveRestoreEnabled}}").strip() == "true"


def test_secret_files_on_the_server(appliance):
    modes = in_droplet("stat", "-c", "%n %a %U %G", "/etc/appliance/htpasswd", "/etc/appliance/tls/server.key")
    assert modes.split("\n")[:2] == ["/etc/appliance/htpasswd 640 root www-data",
                                     "/etc/appliance/tls/server.key 600 root root"]  # nginx's master reads it
    for name in ("ca.key", "server.key", "htpasswd", "droplet_ed25519"):
        assert (Path(appliance["state"]) / "local" / name).stat().st_mode & 0o077 == 0, name


def ssh(user, *command, state):
    return subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o",
                           "UserKnownHostsFile=/dev/null", "-i", str(Path(state) / "local" / "droplet_ed25519"),
                           "-p", "2222", f"{user}@127.0.0.1", *command], capture_output=True, text=True, timeout=60)


def test_ssh_is_hardened_without_locking_the_operator_out(appliance):
    root = ssh("root", "true", state=appliance["state"])
    assert root.returncode != 0 and "Permission denied" in root.stderr
    assert ssh("ds", "sudo", "-n", "true", state=appliance["state"]).returncode == 0
    effective = in_droplet("sshd", "-T")
    for line in ("permitrootlogin no", "passwordauthentication no", "maxauthtries 3"):
        assert line in effective.splitlines(), line
    assert 'Unattended-Upgrade "1"' in in_droplet("cat", "/etc/apt/apt.conf.d/20auto-upgrades")


def test_firewall_lets_only_ssh_http_https_in(appliance):
    address = subprocess.run(["docker", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", DROPLET],
                             capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["docker", "exec", "-d", DROPLET, "python3", "-m", "http.server", "9999"], check=True)
    try:
        time.sleep(1)
        in_droplet("python3", "-c", "import socket; socket.create_connection(('127.0.0.1', 9999), 5)")  # it listens
        for port, open_ in ((9999, False), (443, True), (22, True)):
            with socket.socket() as s:
                s.settimeout(3)
                assert (s.connect_ex((address, port)) == 0) == open_, port
    finally:
        subprocess.run(["docker", "exec", DROPLET, "pkill", "-f", "http.server 9999"])
