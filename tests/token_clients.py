"""The real clients that use an appliance token (Jupyter Server's gateway client, @jupyterlab/services from
Node), for the nginx harness and the e2e tests; and remote.py's tokens command run on this machine."""
import contextlib
import functools
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import websocket

import jupyter_api
from appliance import layout, ssh

HERE = Path(__file__).resolve().parent
NPM_PACKAGES = ["@jupyterlab/services@7.6.6", "ws@8.23.0"]
NPM_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "appliance-tests" / "npm"


def _run_tokens_command(path, auth_socket, request):
    command = ssh.remote_command("tokens", str(path), layout.SECRET_MODE, layout.WEB_GROUP, str(auth_socket))
    r = subprocess.run(["sh", "-c", command], input=json.dumps(request), capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip().splitlines()[-1])
    return json.loads(r.stdout)


def local_tokens_server(path, auth_socket):
    """remote.py's tokens command as `python3 -c` runs it on a server, here (as root): the `server` that
    appliance.tokens' functions take in place of SSH."""
    return functools.partial(_run_tokens_command, path, auth_socket)


def node_modules():
    """@jupyterlab/services and ws, installed with npm once into a cache directory."""
    marker = NPM_CACHE / "node_modules" / ".appliance-packages"
    if not marker.exists() or marker.read_text() != " ".join(NPM_PACKAGES):
        NPM_CACHE.mkdir(parents=True, exist_ok=True)
        (NPM_CACHE / "package.json").write_text('{"private": true}\n')
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--no-save", *NPM_PACKAGES], cwd=NPM_CACHE,
                       check=True, capture_output=True, timeout=600)
        marker.write_text(" ".join(NPM_PACKAGES))
    return NPM_CACHE / "node_modules"


def services(url, token, ca, check=None):
    """Run tests/node/services_client.cjs (the token in its environment, not its argv); its JSON answer."""
    env = {**os.environ, "APPLIANCE_URL": f"{url.rstrip('/')}/", "APPLIANCE_TOKEN": token,
           "NODE_EXTRA_CA_CERTS": str(ca), "NODE_PATH": str(node_modules()), "APPLIANCE_CHECK": check or ""}
    r = subprocess.run(["node", str(HERE / "node" / "services_client.cjs")], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def gateway(url, token, ca):
    """A local Jupyter Server on 127.0.0.1 whose kernels run on the appliance (its gateway client, configured
    through the environment: the token is on no command line); yields (local URL, its own token, log path).
    SSL_CERT_FILE, because GatewayClient.ca_certs is ignored unless a client certificate is set too."""
    port, local_token = _free_port(), secrets.token_hex(16)
    work = Path(tempfile.mkdtemp(prefix="appliance-gateway-"))
    env = {**os.environ, "JUPYTER_GATEWAY_URL": url, "JUPYTER_GATEWAY_AUTH_TOKEN": token, "SSL_CERT_FILE": str(ca),
           "JUPYTER_TOKEN": local_token, "JUPYTER_RUNTIME_DIR": str(work / "runtime"),
           "JUPYTER_CONFIG_DIR": str(work / "config"), "JUPYTER_DATA_DIR": str(work / "data")}
    log = work / "gateway.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "jupyter_server", "--ServerApp.ip=127.0.0.1",
                                    f"--ServerApp.port={port}", "--ServerApp.port_retries=0", "--no-browser", "--allow-root",
                                    f"--ServerApp.root_dir={work}"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                   cwd=work)
    local = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{local}/api/status", headers={"Authorization": f"token {local_token}"}).ok:
                    break
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield local, local_token, log
    finally:
        process.terminate()
        process.wait(20)


def gateway_execute(local, local_token, code):
    """Start a kernel through the local server (so on the appliance), run code, shut it down."""
    auth = {"Authorization": f"token {local_token}"}
    kernel = requests.post(f"{local}/api/kernels", json={"name": "python3"}, headers=auth, timeout=120)
    assert kernel.status_code == 201, kernel.text
    kernel_id = kernel.json()["id"]
    ws = websocket.create_connection(f"{local.replace('http:', 'ws:')}/api/kernels/{kernel_id}/channels",
                                     header=[f"Authorization: token {local_token}"], timeout=60)
    try:
        return kernel_id, jupyter_api.run(ws, code, any_parent=True)
    finally:
        ws.close()
        requests.delete(f"{local}/api/kernels/{kernel_id}", headers=auth, timeout=60)
