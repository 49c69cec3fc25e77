"""Code in a notebook's kernel tries to get power over the server or to outlive a restart, and fails.

The kernel runs as the notebook account (no sudo, no login), in a container with a read-only root
filesystem, Jupyter's configuration pinned to the read-only /etc/jupyter, and the socket nginx
connects to in a directory only root writes.
"""
import json
import subprocess
import time

import pytest

import jupyter_api
from appliance import layout
from helpers import DROPLET, PASSWORD, URL, in_droplet

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

ATTEMPTS = r"""
import json, os, socket
tried = {}
def attempt(name, action):
    try:
        action()
        tried[name] = "done"
    except OSError as exc:
        tried[name] = type(exc).__name__
for path in (os.path.expanduser("~/.jupyter/jupyter_server_config.py"), "/etc/jupyter/jupyter_server_config.py",
             "/opt/venv/etc/jupyter/jupyter_server_config.py", "/usr/local/etc/jupyter/jupyter_server_config.py"):
    def write(path=path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as f:
            f.write("\nc.ServerApp.disable_check_xsrf = True\nc.ServerApp.allow_origin = '*'\n")
    attempt("config " + path, write)
attempt("replace socket", lambda: os.unlink("SOCKET"))
def bind():
    s = socket.socket(socket.AF_UNIX)
    s.bind("SOCKET.new")
attempt("bind beside socket", bind)
attempt("read the server fds", lambda: os.listdir(f"/proc/{os.getppid()}/fd"))
attempt("write the image", lambda: open("/opt/venv/lib/evil.pth", "w").write("import os"))
def notebook():
    with open("NOTEBOOKS/from-kernel.txt", "w") as f:
        f.write("kernel")
attempt("write a notebook", notebook)
json.dumps(tried)
""".replace("SOCKET", layout.IMAGE_SOCKET).replace("NOTEBOOKS", layout.IMAGE_NOTEBOOKS)
HOME_CONFIG = "config " + layout.IMAGE_HOME + "/.jupyter/jupyter_server_config.py"


def no_xsrf_post(ca):
    s = jupyter_api.session(ca, "ds", PASSWORD)
    s.cookies.clear()
    s.headers.pop("X-XSRFToken")
    return s.post(f"{URL}/api/contents", json={"type": "notebook"}).status_code


def wait_healthy(timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if in_droplet("docker", "inspect", "-f", "{{.State.Health.Status}}", layout.CONTAINER).strip() == "healthy":
            return
        time.sleep(1)
    raise AssertionError("the notebook container did not become healthy again")


def test_kernel_code_cannot_persist_config_replace_the_socket_or_reach_the_server(appliance):
    assert no_xsrf_post(appliance["ca"]) == 403
    tried = json.loads(jupyter_api.execute(URL, appliance["ca"], "ds", PASSWORD, ATTEMPTS).strip("'"))
    print(tried)
    assert tried.pop("write a notebook") == "done"
    assert tried.pop(HOME_CONFIG) == "done"  # HOME is writable, but Jupyter's configuration is not read there
    assert all(result in ("PermissionError", "OSError") for result in tried.values()), tried
    # a restart starts from the image again: nothing the kernel wrote outside the notebooks is back
    in_droplet("docker", "restart", layout.CONTAINER)
    wait_healthy()
    assert no_xsrf_post(appliance["ca"]) == 403
    written = HOME_CONFIG.split(" ", 1)[1]
    gone = subprocess.run(["docker", "exec", DROPLET, "docker", "exec", layout.CONTAINER, "test", "-e", written])
    assert gone.returncode == 1, "the kernel's config file survived the restart"


def test_notebook_account_has_no_power_and_shares_the_notebooks_with_the_operator(appliance):
    account = layout.NOTEBOOK_ACCOUNT
    entry = in_droplet("getent", "passwd", account).strip().split(":")
    assert entry[6] == "/usr/sbin/nologin" and int(entry[2]) < 1000
    assert "is not allowed to run sudo" in in_droplet("sudo", "-l", "-U", account)
    assert account not in in_droplet("getent", "group", "sudo")
    made = "hello from the operator"
    jupyter_api.execute(URL, appliance["ca"], "ds", PASSWORD,
                        f"open('{layout.IMAGE_NOTEBOOKS}/shared.txt', 'w').write('kernel')")
    notebooks = layout.notebooks_dir("ds")
    assert in_droplet("stat", "-c", "%U %G %a", notebooks).split() == ["ds", account, "2770"]
    assert in_droplet("stat", "-c", "%U %G", f"{notebooks}/shared.txt").split() == [account, account]
    in_droplet("su", "ds", "-s", "/bin/sh", "-c", f"echo '{made}' > {notebooks}/shared.txt")  # the operator edits it
    assert jupyter_api.execute(URL, appliance["ca"], "ds", PASSWORD,
                               f"open('{layout.IMAGE_NOTEBOOKS}/shared.txt').read()").strip("'\\n") == made


PTH_PROBE = ("import os, site; p = os.path.join(site.getusersitepackages(), 'zz-probe.pth'); "
             "open(p, 'w').write(\"import sys; open('/tmp/pth-ran', 'a')"
             ".write(' '.join(sys.orig_argv) + '\\\\n')\\n\"); p")


def test_a_pth_in_the_package_directory_runs_in_kernels_only(appliance):
    """The package directory is the one place besides the notebooks a kernel writes and a restart keeps; the
    code there (a .pth runs at every start of Python) reaches new kernels, never the entry point or the
    healthcheck (root) nor Jupyter Server, so it cannot switch the XSRF or origin checks off."""
    planted = jupyter_api.execute(URL, appliance["ca"], "ds", PASSWORD, PTH_PROBE).strip("'")
    assert planted.startswith(layout.IMAGE_USER_PACKAGES + "/")
    try:
        in_droplet("docker", "restart", layout.CONTAINER)
        wait_healthy()  # at least one healthcheck, as root, ran since
        ran = jupyter_api.execute(URL, appliance["ca"], "ds", PASSWORD, "open('/tmp/pth-ran').read()")
        assert "ipykernel_launcher" in ran, ran
        assert "start.py" not in ran and "healthcheck.py" not in ran, ran
        assert no_xsrf_post(appliance["ca"]) == 403
    finally:
        jupyter_api.execute(URL, appliance["ca"], "ds", PASSWORD, f"import os; os.remove({planted!r}); 'removed'")
