"""A small client of Jupyter's REST and websocket APIs behind the appliance's nginx."""
import json
import ssl
import uuid

import requests
import websocket


def session(ca, user, password):
    s = requests.Session()
    s.trust_env = False  # REQUESTS_CA_BUNDLE would override our CA
    s.verify = ca
    s.auth = (user, password)
    # Tornado's double-submit XSRF check: the same token as cookie and header, as JupyterLab sends.
    token = uuid.uuid4().hex
    s.cookies.set("_xsrf", token)
    s.headers["X-XSRFToken"] = token
    return s


def execute(url, ca, user, password, code):
    """Start a kernel through the proxy, run `code` over wss, return the text/plain result."""
    s = session(ca, user, password)
    kernel = s.post(f"{url}/api/kernels", json={"name": "python3"})
    assert kernel.status_code == 201, kernel.text
    kernel_id = kernel.json()["id"]
    auth = requests.auth._basic_auth_str(user, password)
    ws = websocket.create_connection(f"{url.replace('https:', 'wss:')}/api/kernels/{kernel_id}/channels",
                                     header=[f"Authorization: {auth}"], origin=url,
                                     sslopt={"ca_certs": ca, "cert_reqs": ssl.CERT_REQUIRED}, timeout=60)
    try:
        return run(ws, code)
    finally:
        ws.close()
        s.delete(f"{url}/api/kernels/{kernel_id}")


def run(ws, code, any_parent=False):
    """Run code over a kernel's open channels websocket; its text/plain result. any_parent: the first result
    whatever its parent (Jupyter Server's gateway client relays replies under a parent of its own)."""
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({"header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                                   "session": uuid.uuid4().hex, "version": "5.3"},
                        "parent_header": {}, "metadata": {}, "channel": "shell",
                        "content": {"code": code, "silent": False, "store_history": False,
                                    "user_expressions": {}, "allow_stdin": False}}))
    while True:
        msg = json.loads(ws.recv())
        mine = any_parent or msg.get("parent_header", {}).get("msg_id") == msg_id
        if mine and msg["msg_type"] == "error":
            raise AssertionError(f"{msg['content']['ename']}: {msg['content']['evalue']}")
        if mine and msg["msg_type"] == "execute_result":
            return msg["content"]["data"]["text/plain"]
        if mine and not any_parent and msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            raise AssertionError("the code ran but its last line has no value")  # (waiting would never end)
