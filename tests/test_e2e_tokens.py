"""End to end (issue 16): tokens made with `provision.py token create` on the session's droplet, used by the
real clients: Jupyter Server's gateway client, @jupyterlab/services from Node, plain requests."""
import re
import time

import pytest
import requests

import token_clients
from appliance import layout
from helpers import PASSWORD, URL, in_droplet, provision

pytestmark = [pytest.mark.e2e, pytest.mark.docker]


def _create(appliance, name, *flags):
    r, _ = provision("token", "create", "--name", name, *flags, env=appliance["env"], timeout=300)
    assert r.returncode == 0, r.stdout[-2000:]
    token = re.search(r"^  token: (\S+)$", r.stdout, re.M)[1]
    assert f"  URL:   {URL}/?token={token}" in r.stdout
    return token


@pytest.fixture(scope="module")
def token(appliance):
    return _create(appliance, "e2e-clients", "--expires", "1d")


def _api(appliance, token=None, **headers):
    s = requests.Session()
    s.trust_env, s.verify = False, appliance["ca"]
    if token:
        s.headers["Authorization"] = f"token {token}"
    s.headers.update(headers)
    return s


def test_the_server_keeps_only_the_hash(appliance, token):
    kept = in_droplet("cat", layout.TOKENS)
    assert "e2e-clients" in kept and token not in kept
    assert in_droplet("stat", "-c", "%a %U %G", layout.TOKENS).split() == ["640", "root", layout.WEB_GROUP]
    stored = [p.read_bytes() for p in appliance["state"].rglob("*") if p.is_file()]
    assert not any(token.encode() in data for data in stored)


def test_a_token_needs_no_xsrf_and_the_browser_login_still_does(appliance, token):
    s = _api(appliance, token)
    kernel = s.post(f"{URL}/api/kernels", json={"name": "python3"})
    assert kernel.status_code == 201, kernel.text
    s.delete(f"{URL}/api/kernels/{kernel.json()['id']}")
    browser = _api(appliance)
    browser.auth = ("ds", PASSWORD)
    assert browser.post(f"{URL}/api/kernels", json={"name": "python3"}).status_code == 403  # _xsrf asked
    forged = _api(appliance, **{layout.TOKEN_HEADER: "e2e-clients"})
    forged.auth = ("ds", PASSWORD)
    assert forged.post(f"{URL}/api/kernels", json={"name": "python3"}).status_code == 403


def test_gateway_client(appliance, token):
    in_droplet("sh", "-c", "echo 'hello through the gateway' > /home/ds/notebooks/e2e-gateway.txt")
    with token_clients.gateway(URL, token, appliance["ca"]) as (local, local_token, log):
        _, result = token_clients.gateway_execute(
            local, local_token, f"open('{layout.IMAGE_NOTEBOOKS}/e2e-gateway.txt').read()")
    assert result == "'hello through the gateway\\n'"
    assert token not in log.read_text()


def test_jupyterlab_services_from_node(appliance, token):
    out = token_clients.services(URL, token, appliance["ca"])
    assert out["execute"] == "42"
    assert out["contents"] == {"saved": 5 * 1024 * 1024, "got": 5 * 1024 * 1024, "same": True}
    assert out["terminal"] == "marker-42"


def test_cross_origin_refused_and_the_token_not_logged(appliance, token):
    evil = _api(appliance, token, Origin="https://evil.example")
    assert evil.post(f"{URL}/api/kernels", json={"name": "python3"}).status_code in (403, 404)
    assert _api(appliance).get(f"{URL}/api/contents/e2e-missing?token={token}").status_code == 404
    time.sleep(1)
    assert token not in in_droplet("docker", "logs", layout.CONTAINER)
    assert token not in in_droplet("cat", layout.NGINX_ACCESS_LOG)


def test_list_revoke_and_expiry(appliance, token):
    assert _api(appliance, token).get(f"{URL}/api/status").status_code == 200
    r, _ = provision("token", "list", env=appliance["env"], timeout=300)
    assert r.returncode == 0 and re.search(r"^e2e-clients .* UTC\s*$", r.stdout, re.M), r.stdout
    short = _create(appliance, "e2e-revoked")
    assert _api(appliance, short).get(f"{URL}/api/status").status_code == 200
    r, _ = provision("token", "revoke", "e2e-revoked", env=appliance["env"], timeout=300)
    assert r.returncode == 0, r.stdout
    assert _api(appliance, short).get(f"{URL}/api/status").status_code == 401
    assert token_clients.services(URL, short, appliance["ca"], check="status") == {"status": 401}
    r, _ = provision("token", "create", "--expires", "soon", env=appliance["env"], timeout=300)
    assert r.returncode == 2 and "--expires" in r.stdout
