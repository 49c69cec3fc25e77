"""The rendered site in a real nginx in front of a real Jupyter Server.

Paths of the rendered files are rebased onto a temporary directory and the
ports moved to free ones on 127.0.0.1; everything else is what the server
gets.
"""
import base64
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import websocket

import jupyter_api
import token_clients
from appliance import config, layout, render, tokens
from appliance.server import authd


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


HTTP, HTTPS = _free_port(), _free_port()  # free ones: several runs may share this machine
PASSWORD = "nginx test password"
IMAGE_BASE = Path(__file__).resolve().parent.parent / "images" / "base"
pytestmark = pytest.mark.skipif(not shutil.which("nginx"), reason="needs Debian's nginx (tests/run.py installs it)")


def _wait(check, what, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _listening(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _rebase(text, out, base):
    """A rendered file's server paths moved under out (files) and base (sockets)."""
    return (text.replace(layout.ETC, f"{out}{layout.ETC}").replace(layout.LIB, f"{out}{layout.LIB}")
            .replace(layout.JUPYTER_SOCKET_DIR, f"{base}/run")
            .replace(str(Path(layout.AUTH_SOCKET).parent), f"{base}/auth")
            .replace(layout.NGINX_ACCESS_LOG, f"{base}/access.log"))


def _nginx_conf(base, out):
    """An nginx.conf in base serving the site rendered under out, as Debian's includes it."""
    conf = base / "nginx.conf"
    conf.write_text(f"""user www-data;
worker_processes 1;
pid {base}/nginx.pid;
error_log {base}/error.log;
include /etc/nginx/modules-enabled/*.conf;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    access_log {base}/access.log;
    client_body_temp_path {base}/body;
    proxy_temp_path {base}/proxy;
    include {out}{layout.NGINX_SITE};
}}
""")
    return conf


@pytest.fixture(scope="module")
def site():
    base = Path(tempfile.mkdtemp(prefix="appliance-nginx-"))
    os.chmod(base, 0o755)  # nginx workers (www-data) walk into it, as on the server
    cfg = config.load({"host": "127.0.0.1", "state_dir": str(base / "state"), "http_port": HTTP,
                       "https_port": HTTPS, "public_https_port": HTTPS}, env={})
    state, cert, _ = render.prepare(cfg, interactive=False,
                                    env={"APPLIANCE_PASSWORD": PASSWORD})
    out = base / "out"
    files = render.render(cfg, state, out)
    os.chmod(out, 0o755)

    for item in files:  # the owners and modes Ansible gives them on the server
        path = out / item.path.lstrip("/")
        shutil.chown(path, "root", item.group)
        os.chmod(path, int(item.mode, 8))
        for parent in path.relative_to(out).parents:
            os.chmod(out / parent, 0o755)
        if item.path in (layout.NGINX_SITE, layout.JUPYTER_CONFIG):
            path.write_text(_rebase(path.read_text(), out, base))
    session_key = out / layout.SESSION_KEY.lstrip("/")  # made on the server by the web role, as it does
    session_key.write_bytes(os.urandom(32))
    shutil.chown(session_key, "root", layout.WEB_GROUP)
    os.chmod(session_key, int(layout.SECRET_MODE, 8))
    authd.nginx_secret(session_key, out / layout.HTPASSWD.lstrip("/"), out / layout.SESSION_NGINX.lstrip("/"))
    run = base / "run"
    run.mkdir()
    shutil.chown(run, "root", "www-data")
    os.chmod(run, 0o2750)
    (base / "auth").mkdir()
    shutil.chown(base / "auth", "www-data", "www-data")
    # As on the server: Debian's python3 and python3-bcrypt, as nginx's user.
    verifier = subprocess.Popen(["setpriv", "--reuid=www-data", "--regid=www-data", "--init-groups",
                              "/usr/bin/python3", f"{out}{layout.AUTHD}",
                              f"--htpasswd={out}{layout.HTPASSWD}", f"--tokens={out}{layout.TOKENS}",
                              f"--session-key={session_key}", f"--socket={base}/auth/auth.sock"])
    notebooks = base / "notebooks"
    notebooks.mkdir()
    jupyter_log = open(base / "jupyter.log", "w")
    jupyter = subprocess.Popen([sys.executable, "-m", "jupyter_server", "--allow-root",
                                f"--config={out}{layout.JUPYTER_CONFIG}", f"--ServerApp.root_dir={notebooks}"],
                               stdout=jupyter_log, stderr=subprocess.STDOUT, cwd=base,
                               env={**os.environ, "PYTHONPATH": str(IMAGE_BASE)})  # the image's identity provider
    conf = _nginx_conf(base, out)
    nginx = None
    try:
        _wait(lambda: (run / "jupyter.sock").exists() and (base / "auth/auth.sock").exists(), "the sockets")
        check = subprocess.run(["nginx", "-t", "-c", str(conf)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        nginx = subprocess.Popen(["nginx", "-c", str(conf), "-g", "daemon off;"])
        _wait(lambda: _listening(HTTP) and _listening(HTTPS), "nginx")
        yield {"cfg": cfg, "out": out, "state": state, "cert": cert, "base": base,
               "ca": str(out / layout.CA_CERT.lstrip("/")), "url": f"https://127.0.0.1:{HTTPS}",
               "authd_pid": verifier.pid, "jupyter_log": base / "jupyter.log", "nginx_pid": nginx.pid,
               "tokens": token_clients.local_tokens_server(out / layout.TOKENS.lstrip("/"), base / "auth/auth.sock")}
    finally:
        if nginx:
            nginx.terminate()
            nginx.wait(10)
        for process in (jupyter, verifier):
            process.terminate()
            process.wait(10)
        jupyter_log.close()
        shutil.rmtree(base, ignore_errors=True)


def _sessions_remade(site):
    """What the path unit does on the server when the htpasswd or the session key changes (appliance-session):
    nginx's signing key made again from both files and, when it changed, nginx reloaded (here with a signal to
    the test's own nginx) and its old workers waited for, by the same code."""
    out = site["out"]
    if authd.nginx_secret(out / layout.SESSION_KEY.lstrip("/"), out / layout.HTPASSWD.lstrip("/"),
                          out / layout.SESSION_NGINX.lstrip("/")):
        assert authd.reload_nginx(site["base"] / "nginx.pid",
                                  reload=lambda: os.kill(site["nginx_pid"], signal.SIGHUP))


def _session(site, password=PASSWORD):
    return jupyter_api.session(site["ca"], site["cfg"].user, password)


def test_http_only_redirects(site):
    r = requests.get(f"http://127.0.0.1:{HTTP}/lab?x=1", allow_redirects=False)
    assert r.status_code == 308
    assert r.headers["Location"] == f"https://127.0.0.1:{HTTPS}/lab?x=1"
    assert "nginx/" not in r.headers.get("Server", "")  # server_tokens off


def test_login_required(site):
    assert requests.get(f"{site['url']}/api/status", verify=site["ca"]).status_code == 401
    assert _session(site, "wrong password").get(f"{site['url']}/api/status").status_code == 401
    r = _session(site).get(f"{site['url']}/api/status")
    assert r.status_code == 200 and "started" in r.json()
    assert r.headers["Strict-Transport-Security"].startswith("max-age=")


def test_kernel_runs_over_websocket(site):
    assert jupyter_api.execute(site["url"], site["ca"], site["cfg"].user, PASSWORD, "6*7") == "42"


def test_large_upload_accepted(site):
    """A 1 MiB JupyterLab upload chunk is ~1.4 MB of base64 JSON; a 100 MB save must pass too."""
    s = _session(site)
    chunk = base64.b64encode(os.urandom(1024 * 1024)).decode()
    r = s.put(f"{site['url']}/api/contents/upload.bin",
              json={"type": "file", "format": "base64", "chunk": 1, "content": chunk})
    assert r.status_code in (200, 201), r.text[:200]
    big = "x" * (100 * 1024 * 1024)
    r = s.put(f"{site['url']}/api/contents/big.txt", json={"type": "file", "format": "text", "content": big})
    assert r.status_code in (200, 201), r.text[:200]
    assert (site["base"] / "notebooks" / "big.txt").stat().st_size == len(big)


def test_htpasswd_accepted_by_apache_tools(site):
    htpasswd = site["out"] / layout.HTPASSWD.lstrip("/")
    r = subprocess.run(["htpasswd", "-v", "-i", str(htpasswd), site["cfg"].user], input=PASSWORD,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    bad = subprocess.run(["htpasswd", "-v", "-i", str(htpasswd), site["cfg"].user], input="nope",
                         capture_output=True, text=True)
    assert bad.returncode != 0


def test_certificate_chain_verifies(site):
    out = site["out"]
    r = subprocess.run(["openssl", "verify", "-CAfile", site["ca"], str(out / layout.TLS_CERT.lstrip("/"))],
                       capture_output=True, text=True)
    assert r.returncode == 0 and ": OK" in r.stdout, r.stdout + r.stderr


def test_sslyze_mozilla_intermediate(site):
    r = subprocess.run([sys.executable, "-m", "sslyze", "--mozilla_config=intermediate",
                        f"--certinfo_ca_file={site['ca']}", f"127.0.0.1:{HTTPS}"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:]
    assert f"127.0.0.1:{HTTPS}: OK - Compliant." in r.stdout, r.stdout[-3000:]


def _status_from(site, source, password):
    """GET /api/status from a given loopback source address (a different client)."""
    ctx = ssl.create_default_context(cafile=site["ca"])
    conn = http.client.HTTPSConnection("127.0.0.1", HTTPS, context=ctx, source_address=(source, 0), timeout=60)
    try:
        token = base64.b64encode(f"{site['cfg'].user}:{password}".encode()).decode()
        conn.request("GET", "/api/status", headers={"Authorization": f"Basic {token}"})
        return conn.getresponse().status
    finally:
        conn.close()


def test_wrong_passwords_are_throttled_per_client(site):
    statuses = [_status_from(site, "127.0.0.3", f"guess number {i}") for i in range(authd.FAIL_LIMIT + 2)]
    assert statuses[:authd.FAIL_LIMIT - 1] == [401] * (authd.FAIL_LIMIT - 1)
    assert statuses[-1] == 429
    assert _status_from(site, "127.0.0.3", PASSWORD) == 429  # even the right one, for a while
    assert _status_from(site, "127.0.0.4", PASSWORD) == 200  # another client is not affected
    # a burst of requests with a good login (JupyterLab's page load) is never throttled
    assert {_status_from(site, "127.0.0.4", PASSWORD) for _ in range(3 * authd.FAIL_LIMIT)} == {200}


def test_new_password_ends_old_sessions(site):
    s = _session(site)
    assert s.get(f"{site['url']}/api/status").status_code == 200
    htpasswd = site["out"] / layout.HTPASSWD.lstrip("/")
    old = htpasswd.read_bytes()
    try:
        subprocess.run(["htpasswd", "-b", "-B", "-C", "10", str(htpasswd), site["cfg"].user, "a new password"],
                       check=True, capture_output=True)
        _sessions_remade(site)
        assert s.get(f"{site['url']}/api/status").status_code == 401
        assert _session(site, "a new password").get(f"{site['url']}/api/status").status_code == 200
    finally:
        htpasswd.write_bytes(old)
        _sessions_remade(site)
    assert s.get(f"{site['url']}/api/status").status_code == 200


def _get(site, path, password=None, source="127.0.0.1", port=HTTPS):
    """(status, headers) of one GET; headers an http.client message: get_all() shows any duplicate."""
    if port == HTTPS:
        ctx = ssl.create_default_context(cafile=site["ca"])
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, source_address=(source, 0), timeout=30)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, source_address=(source, 0), timeout=30)
    try:
        token = base64.b64encode(f"{site['cfg'].user}:{password}".encode()).decode()
        headers = {"Authorization": f"Basic {token}", "Cookie": "_xsrf=t", "X-XSRFToken": "t"}  # as JupyterLab
        conn.request("GET", path, headers=headers if password else {})
        r = conn.getresponse()
        r.read()
        return r.status, r.msg
    finally:
        conn.close()


def test_security_headers_on_every_response(site):
    """Each once, on nginx's own answers (redirect, login, throttling, errors) and on Jupyter's, whose own
    Content-Security-Policy (frame-ancestors 'self', a sandbox on users' files) is kept as it is."""
    r = _session(site).put(f"{site['url']}/api/contents/page.html",
                           json={"type": "file", "format": "text", "content": "<p>hi</p>"})
    assert r.status_code in (200, 201)
    for _ in range(authd.FAIL_LIMIT + 1):
        throttled = _get(site, "/api/status", "wrong guess", source="127.0.0.7")
    answers = {
        "308 from port 80": (_get(site, "/lab", port=HTTP), 308, "nginx"),
        "401 without a login": (_get(site, "/api/status"), 401, "nginx"),
        "401 wrong password": (_get(site, "/lab", "wrong password", source="127.0.0.6"), 401, "nginx"),
        "429 throttled": (throttled, 429, "nginx"),
        "404 from nginx": (_get(site, "/_appliance_auth", PASSWORD), 404, "nginx"),
        "200 from Jupyter": (_get(site, "/api/status", PASSWORD), 200, "jupyter"),
        "404 Jupyter's page": (_get(site, "/no-such-page", PASSWORD), 404, "jupyter"),
        "200 a user's file": (_get(site, "/files/page.html", PASSWORD), 200, "files"),
        "404 from Jupyter": (_get(site, "/api/contents/nope.ipynb", PASSWORD), 404, "jupyter"),
    }
    for what, ((status, headers), expected, source) in answers.items():
        assert status == expected, what
        assert headers.get_all("Strict-Transport-Security") == ["max-age=63072000"], what
        assert headers.get_all("X-Content-Type-Options") == ["nosniff"], what
        assert headers.get_all("Referrer-Policy") == ["same-origin"], what
        csp, frames = headers.get_all("Content-Security-Policy") or [], headers.get_all("X-Frame-Options")
        assert len(csp) == 1 and csp[0].count("frame-ancestors") == 1, (what, csp)
        if source == "nginx":
            assert (csp, frames) == (["frame-ancestors 'none'"], ["DENY"]), what
        else:
            assert csp[0].startswith("frame-ancestors 'self'") and frames == ["SAMEORIGIN"], (what, csp)
            assert ("sandbox" in csp[0]) == (source == "files"), (what, csp)


def test_xsrf_cookie_is_secure(site):
    s = requests.Session()
    s.trust_env, s.verify, s.auth = False, site["ca"], (site["cfg"].user, PASSWORD)
    r = s.get(f"{site['url']}/lab")  # a page (its 404 if JupyterLab is not installed here) sets the cookie
    cookies = [c for c in r.raw.headers.getlist("Set-Cookie") if c.startswith("_xsrf=")]
    assert cookies, r.headers
    assert all("secure" in [a.strip().lower() for a in c.split(";")] for c in cookies), cookies


HOSTILE_HOST = "::1%x;satisfy any;allow all;#"  # an IPv6 "zone id" that is nginx text (issue 13, item 2)


def _unauthenticated_status(site, host, source):
    """What a host value from `source` (flag, config file or environment) leads to: "refused: <error>" when
    validation refuses it, else the status of /api/status asked with no login of the site it renders,
    served by a real nginx (on ports of its own) in front of the fixture's Jupyter and verifier."""
    base = Path(tempfile.mkdtemp(prefix="appliance-hostile-"))
    os.chmod(base, 0o755)
    toml = base / "c.toml"
    toml.write_text(f"host = {json.dumps(host)}\n")
    http, https = _free_port(), _free_port()
    flags = {"state_dir": str(base / "state"), "http_port": http, "https_port": https, "public_https_port": https}
    nginx = None
    try:
        cfg = config.load({**flags, "host": host} if source == "flag" else flags,
                          env={"APPLIANCE_HOST": host} if source == "env" else {},
                          config_file=toml if source == "toml" else None)
        state, _, _ = render.prepare(cfg, interactive=False, env={"APPLIANCE_PASSWORD": PASSWORD})
        out = base / "out"
        render.render(cfg, state, out)
        site_file = out / layout.NGINX_SITE.lstrip("/")
        site_file.write_text(_rebase(site_file.read_text(), out, site["base"]))
        authd.nginx_secret(None, out / layout.HTPASSWD.lstrip("/"), out / layout.SESSION_NGINX.lstrip("/"))
        conf = _nginx_conf(base, out)
        check = subprocess.run(["nginx", "-t", "-c", str(conf)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        nginx = subprocess.Popen(["nginx", "-c", str(conf), "-g", "daemon off;"])
        _wait(lambda: _listening(https), "nginx")
        return requests.get(f"https://127.0.0.1:{https}/api/status", verify=False).status_code
    except config.ConfigError as exc:
        return f"refused: {exc}"
    finally:
        if nginx:
            nginx.terminate()
            nginx.wait(10)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("source", ["flag", "toml", "env"])
def test_no_host_value_opens_jupyter_without_login(site, source):
    """Before issue 13 this host passed validation from every source, `nginx -t` accepted the site it made,
    and Jupyter answered 200 with no login at all."""
    assert _unauthenticated_status(site, "::1", source) == 401  # the same path with a plain host asks a login
    outcome = _unauthenticated_status(site, HOSTILE_HOST, source)
    assert str(outcome).startswith("refused: host"), outcome


def _cpu_seconds(pid):
    """User + system CPU time of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed(call, *args):
    started = time.monotonic()
    return call(*args), time.monotonic() - started


def test_a_burst_of_guesses_from_one_address_costs_at_most_the_limit(site):
    """100 wrong guesses in flight at once from one address: at most FAIL_LIMIT bcrypt checks run, the rest
    are 429 without hashing; the right password from that address is 429 meanwhile, from another it is 200."""
    pid, htpasswd = site["authd_pid"], site["out"] / layout.HTPASSWD.lstrip("/")
    cpu = _cpu_seconds(pid)
    status, single = _timed(_status_from, site, "127.0.0.20", "one wrong guess")
    assert status == 401
    per_check = _cpu_seconds(pid) - cpu
    os.utime(htpasswd)  # the verifier forgets remembered logins: the right password below costs a bcrypt check
    cpu = _cpu_seconds(pid)
    with ThreadPoolExecutor(101) as pool:
        burst = [pool.submit(_status_from, site, "127.0.0.21", f"burst guess {i}") for i in range(100)]
        time.sleep(1)  # the guesses are in flight (as in the issue: the right password one second later)
        same = pool.submit(_status_from, site, "127.0.0.21", PASSWORD)
        other, latency = _timed(_status_from, site, "127.0.0.22", PASSWORD)
        statuses = [f.result() for f in burst]
    spent = _cpu_seconds(pid) - cpu
    print(f"\nburst of 100 from one address: {statuses.count(401)} x 401, {statuses.count(429)} x 429, "
          f"others {sorted(set(statuses) - {401, 429})}; verifier CPU {spent:.2f} s "
          f"(one check {per_check:.2f} s CPU, {single:.2f} s wall); right password from the same address "
          f"{same.result()}, from another {other} in {latency:.2f} s")
    assert set(statuses) <= {401, 429} and statuses.count(401) <= authd.FAIL_LIMIT
    assert same.result() == 429
    assert other == 200
    assert spent <= (authd.FAIL_LIMIT + 3) * per_check + 0.5  # the limit's checks, the right password, slack
    assert latency < (authd.FAIL_LIMIT + 2) * single + 2


# Tokens (issue 16) ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def token(site):
    """A token made by `provision.py token create`'s code, its hash installed by remote.py's command."""
    return tokens.create(site["cfg"], name="harness", say=lambda _: None, server=site["tokens"])


def _api(site, token=None, password=None, **headers):
    """A requests session as a tool (token in the header) or a browser without its XSRF cookie (password)."""
    s = requests.Session()
    s.trust_env, s.verify = False, site["ca"]
    if password:
        s.auth = (site["cfg"].user, password)
    if token:
        s.headers["Authorization"] = f"token {token}"
    s.headers.update(headers)
    return s


def test_a_token_needs_no_xsrf_cookie_and_a_password_still_does(site, token):
    s = _api(site, token)
    me = s.get(f"{site['url']}/api/me")
    assert me.status_code == 200 and me.json()["identity"]["name"] == f"{site['cfg'].user} (token harness)"
    kernel = s.post(f"{site['url']}/api/kernels", json={"name": "python3"})
    assert kernel.status_code == 201, kernel.text
    assert s.delete(f"{site['url']}/api/kernels/{kernel.json()['id']}").status_code == 204
    browser = _api(site, password=PASSWORD)  # the browser flow as before: XSRF checked
    assert browser.get(f"{site['url']}/api/me").json()["identity"]["name"] == site["cfg"].user
    r = browser.post(f"{site['url']}/api/kernels", json={"name": "python3"})
    assert r.status_code == 403 and "_xsrf" in r.text
    assert requests.get(f"{site['url']}/?token={token}", verify=site["ca"], allow_redirects=False).status_code \
        in (200, 302)  # the URL `token create` prints
    ui = _api(site, password=PASSWORD).get(f"{site['url']}/lab?token={token}")
    assert token not in ui.text  # no page config ever carries it (JupyterLab would send it on its own requests)


def test_a_client_cannot_forge_the_trusted_header(site, token):
    forged = {layout.TOKEN_HEADER: "harness"}
    browser = _api(site, password=PASSWORD, **forged)
    assert browser.get(f"{site['url']}/api/me").json()["identity"]["name"] == site["cfg"].user
    assert browser.post(f"{site['url']}/api/kernels", json={"name": "python3"}).status_code == 403  # XSRF asked
    for name in (layout.TOKEN_HEADER.lower(), layout.TOKEN_HEADER.replace("-", "_")):
        r = _api(site, password=PASSWORD, **{name: "harness"}).post(f"{site['url']}/api/kernels", json={})
        assert r.status_code == 403, name
    assert _api(site, **forged).get(f"{site['url']}/api/status").status_code == 401  # no login, no way in
    # a token request's header carries the verifier's name for it, not the client's
    assert _api(site, token, **{layout.TOKEN_HEADER: "other"}).get(f"{site['url']}/api/me").json()[
        "identity"]["name"].endswith("(token harness)")


def test_the_token_never_reaches_jupyter_or_the_access_log(site, token):
    r = _api(site).get(f"{site['url']}/api/contents/no-such-file?x=1&token={token}&y=2")
    assert r.status_code == 404  # Jupyter's: it logs the URI it got
    logged = "/api/contents/no-such-file?x=1&y=2 ("
    _wait(lambda: logged in site["jupyter_log"].read_text(), "Jupyter's log line")
    assert token not in site["jupyter_log"].read_text()
    access = site["base"] / "access.log"
    _wait(lambda: "/api/contents/no-such-file" in access.read_text(), "nginx's log line")
    assert token not in access.read_text()


def test_revoked_and_expired_tokens_are_refused(site):
    quiet = lambda _: None  # noqa: E731
    short = tokens.create(site["cfg"], name="short-lived", say=quiet, server=site["tokens"])
    assert _api(site, short).get(f"{site['url']}/api/status").status_code == 200
    tokens.revoke(site["cfg"], "short-lived", say=quiet, server=site["tokens"])
    started = time.monotonic()
    assert _api(site, short).get(f"{site['url']}/api/status").status_code == 401
    assert time.monotonic() - started < 1
    expired = "an-expired-token-" + "x" * 30
    site["tokens"]({"op": "create", "name": "expired", "created": int(time.time()) - 7200,
                    "expires": int(time.time()) - 1, "sha256": hashlib.sha256(expired.encode()).hexdigest()})
    assert _api(site, expired).get(f"{site['url']}/api/status").status_code == 401
    assert requests.get(f"{site['url']}/api/status?token={expired}", verify=site["ca"]).status_code == 401
    listed = {t["name"]: t for t in tokens.list_tokens(site["cfg"], say=quiet, server=site["tokens"])}
    assert "short-lived" not in listed and listed["expired"]["expires"] < time.time()


def test_token_list_shows_the_last_use(site, token):
    assert _api(site, token).get(f"{site['url']}/api/status").status_code == 200
    lines = []
    listed = {t["name"]: t for t in tokens.list_tokens(site["cfg"], say=lines.append, server=site["tokens"])}
    assert time.time() - listed["harness"]["last_used"] < 60
    assert lines[0].split() == ["NAME", "CREATED", "EXPIRES", "LAST", "USED"]
    assert any(line.startswith("harness ") for line in lines)


def _token_status(source, token):
    ctx = ssl.create_default_context(cafile=_token_status.ca)
    conn = http.client.HTTPSConnection("127.0.0.1", HTTPS, context=ctx, source_address=(source, 0), timeout=30)
    try:
        conn.request("GET", f"/api/status?token={token}")
        return conn.getresponse().status
    finally:
        conn.close()


def test_token_guesses_are_throttled_per_client(site, token):
    _token_status.ca = site["ca"]
    guesses = [_token_status("127.0.0.30", f"guess-{i}") for i in range(authd.FAIL_LIMIT + 1)]
    assert guesses == [401] * (authd.FAIL_LIMIT - 1) + [429, 429]
    assert _token_status("127.0.0.30", token) == 429  # even the right one, for a while
    assert _token_status("127.0.0.31", token) == 200


def test_a_token_in_a_cross_origin_request_is_still_refused(site, token):
    s = _api(site, token, Origin="https://evil.example")
    assert s.post(f"{site['url']}/api/kernels", json={"name": "python3"}).status_code in (403, 404)
    assert s.get(f"{site['url']}/api/contents").status_code in (403, 404)
    same = _api(site, token, Origin=site["url"]).post(f"{site['url']}/api/kernels", json={"name": "python3"})
    assert same.status_code == 201  # the same request from the appliance's own origin
    wss = f"{site['url'].replace('https:', 'wss:')}/api/kernels/{same.json()['id']}/channels?token={token}"
    sslopt = {"ca_certs": site["ca"], "cert_reqs": ssl.CERT_REQUIRED}
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(wss, origin="https://evil.example", sslopt=sslopt, timeout=30)
    assert refused.value.status_code == 403
    websocket.create_connection(wss, origin=site["url"], sslopt=sslopt, timeout=30).close()
    _api(site, token).delete(f"{site['url']}/api/kernels/{same.json()['id']}")


def test_jupyter_servers_gateway_client(site, token):
    """A local Jupyter Server whose kernels run on the appliance: start one, run code, read a notebook file."""
    notebook_file = site["base"] / "notebooks" / "from-the-appliance.txt"
    notebook_file.write_text("hello through the gateway")
    with token_clients.gateway(site["url"], token, site["ca"]) as (local, local_token, log):
        kernel_id, result = token_clients.gateway_execute(local, local_token, f"open({str(notebook_file)!r}).read()")
    assert result == "'hello through the gateway'"
    assert token not in log.read_text()


def test_jupyterlab_services_from_node(site, token):
    out = token_clients.services(site["url"], token, site["ca"])
    assert out["execute"] == "42"
    assert out["contents"] == {"saved": 5 * 1024 * 1024, "got": 5 * 1024 * 1024, "same": True}
    assert out["terminal"] == "marker-42"
    assert (site["base"] / "notebooks" / "services-5mb.txt").stat().st_size == 5 * 1024 * 1024
    quiet = lambda _: None  # noqa: E731
    revoked = tokens.create(site["cfg"], name="node-revoked", say=quiet, server=site["tokens"])
    tokens.revoke(site["cfg"], "node-revoked", say=quiet, server=site["tokens"])
    assert token_clients.services(site["url"], revoked, site["ca"], check="status") == {"status": 401}


# Session cookies (issue 19) ---------------------------------------------------------------------------------

def _answered(site):
    """How many requests nginx has asked the verifier about (its socket, as root)."""
    conn = http.client.HTTPConnection("localhost")
    conn.sock = socket.socket(socket.AF_UNIX)
    conn.sock.connect(str(site["base"] / "auth/auth.sock"))
    try:
        conn.request("GET", authd.ANSWERED_PATH)
        return json.loads(conn.getresponse().read())["answered"]
    finally:
        conn.close()


def _request(site, path="/api/status", method="GET", cookie=None, password=None, authorization=None, body=None,
             source="127.0.0.1", cookie_header="_xsrf=t"):
    """(status, headers, body) of one request with exactly the login given: a session cookie's value, a Basic
    password, or an Authorization header of any kind."""
    ctx = ssl.create_default_context(cafile=site["ca"])
    conn = http.client.HTTPSConnection("127.0.0.1", HTTPS, context=ctx, source_address=(source, 0), timeout=30)
    headers = {"Cookie": cookie_header, "X-XSRFToken": "t"}
    if cookie is not None:
        headers["Cookie"] += f"; {layout.SESSION_COOKIE}={cookie}"
    if password is not None:
        authorization = "Basic " + base64.b64encode(f"{site['cfg'].user}:{password}".encode()).decode()
    if authorization is not None:
        headers["Authorization"] = authorization
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, r.msg, r.read()
    finally:
        conn.close()


def _session_cookies(headers):
    return [c for c in headers.get_all("Set-Cookie") or [] if c.startswith(f"{layout.SESSION_COOKIE}=")]


def _cookie(site, user=None, expires_in=600, key=None, htpasswd=None):
    """A session cookie's value made as the verifier makes them (by default valid: the site's key and htpasswd)."""
    key = key or (site["out"] / layout.SESSION_KEY.lstrip("/")).read_bytes()
    htpasswd = htpasswd or (site["out"] / layout.HTPASSWD.lstrip("/")).read_bytes()
    user = base64.urlsafe_b64encode((user or site["cfg"].user).encode()).rstrip(b"=").decode()
    payload = f"{int(time.time()) + expires_in}.{user}"
    return f"{payload}.{authd.session_mac(authd.signing_key(key, hashlib.sha256(htpasswd).digest()), payload)}"


def _login(site, password=PASSWORD):
    """The session cookie's value that a password login gets."""
    status, headers, _ = _request(site, password=password)
    assert status == 200
    (cookie,) = _session_cookies(headers)
    return cookie.split(";")[0].split("=", 1)[1]


def test_a_password_login_gets_a_session_cookie_and_nothing_else_does(site, token):
    status, headers, _ = _request(site, password=PASSWORD)
    (cookie,) = _session_cookies(headers)
    value, *attributes = [a.strip() for a in cookie.split(";")]
    assert status == 200 and sorted(attributes) == sorted(
        [f"Max-Age={authd.SESSION_SECONDS}", "Path=/", "Secure", "HttpOnly", "SameSite=Strict"])
    expiry, user, _ = value.split("=", 1)[1].split(".")
    assert abs(int(expiry) - time.time() - authd.SESSION_SECONDS) < 60
    assert base64.urlsafe_b64decode(user + "==").decode() == site["cfg"].user
    assert headers.get_all("Strict-Transport-Security") == ["max-age=63072000"]  # the security headers still
    for what, answer in {"no login": _request(site), "a wrong password": _request(site, password="wrong"),
                         "a token": _request(site, authorization=f"token {token}"),
                         "a token in the query": _request(site, f"/api/status?token={token}")}.items():
        assert not _session_cookies(answer[1]), what
        assert answer[0] == (200 if "token" in what else 401), what


def test_a_session_cookie_alone_is_let_in_without_asking_the_verifier(site):
    cookie = _login(site)
    before = _answered(site)
    assert {_request(site, cookie=cookie)[0] for _ in range(20)} == {200}
    status, _, body = _request(site, "/api/me", cookie=cookie)
    assert status == 200 and json.loads(body)["identity"]["name"] == site["cfg"].user  # a password login
    kernel = _request(site, "/api/kernels", "POST", cookie=cookie, body=json.dumps({"name": "python3"}))
    assert kernel[0] == 201  # a request body passes too
    kernel_id = json.loads(kernel[2])["id"]
    assert _request(site, f"/api/kernels/{kernel_id}", "DELETE", cookie=cookie)[0] == 204
    assert _request(site, "/static/favicons/favicon.ico", cookie=cookie)[0] in (200, 404)  # the assets' location
    assert _answered(site) == before
    # and the same cookie can claim no token: a client's trusted header is dropped, XSRF is asked
    ctx = ssl.create_default_context(cafile=site["ca"])
    conn = http.client.HTTPSConnection("127.0.0.1", HTTPS, context=ctx, timeout=30)
    conn.request("POST", "/api/kernels", body="{}", headers={"Cookie": f"{layout.SESSION_COOKIE}={cookie}",
                                                            layout.TOKEN_HEADER: "harness"})
    assert conn.getresponse().status == 403
    conn.close()


def test_a_cookie_that_is_not_valid_is_no_login(site):
    valid = _cookie(site)
    assert _request(site, cookie=valid)[0] == 200  # the test's cookies are made as the verifier makes them
    expiry, user, mac = valid.split(".")
    other_user = base64.urlsafe_b64encode(b"eve").rstrip(b"=").decode()
    bad = {"forged": f"{expiry}.{user}.{'A' * len(mac)}",
           "expired": _cookie(site, expires_in=-1),
           "expiry changed": f"{int(expiry) + 3600}.{user}.{mac}",
           "user changed": f"{expiry}.{other_user}.{mac}",
           "another key": _cookie(site, key=os.urandom(32)),
           "another htpasswd": _cookie(site, htpasswd=b"ds:$2y$12$" + b"x" * 53 + b"\n"),
           "MAC cut short": f"{expiry}.{user}.{mac[:-1]}",
           "a part more": f"{valid}.x", "empty": ""}
    before = _answered(site)
    for what, cookie in bad.items():
        status, headers, _ = _request(site, cookie=cookie)
        assert status == 401, what
        assert headers["WWW-Authenticate"] == 'Basic realm="Jupyter", charset="UTF-8"', what
    assert _answered(site) == before  # no credentials at all: nginx's own 401
    for what, cookie in bad.items():  # with the password, the verifier lets in and issues a new cookie
        status, headers, _ = _request(site, cookie=cookie, password=PASSWORD)
        assert status == 200 and _session_cookies(headers), what
    assert _answered(site) == before + len(bad)


def test_only_the_session_cookie_itself_is_read(site):
    valid, name = _cookie(site), layout.SESSION_COOKIE
    assert _request(site, cookie_header=f"_xsrf=t;{name}={valid}; b=2")[0] == 200  # among others, any spacing
    before = _answered(site)
    for header in (f"x{name}={valid}", f"other={name}={valid}", f"{name}={valid}x", f"{name}={valid}.x",
                   f'{name}="{valid}"', f"{name.lower()}={valid}", f"{name}={valid.replace('.', '.x', 1)}"):
        assert _request(site, cookie_header=header)[0] == 401, header
    assert _answered(site) == before  # no login at all: nginx's own 401s


def test_a_new_htpasswd_ends_every_session_at_once(site):
    cookie = _login(site)
    assert _request(site, cookie=cookie)[0] == 200
    htpasswd = site["out"] / layout.HTPASSWD.lstrip("/")
    old = htpasswd.read_bytes()
    try:
        subprocess.run(["htpasswd", "-b", "-B", "-C", "10", str(htpasswd), site["cfg"].user, "a new password"],
                       check=True, capture_output=True)
        # nginx knows nothing of the file: until the signing key is made again (the path unit's work on the
        # server, tests/test_e2e.py) the old cookie is still good; the password that came with it is not
        assert _request(site, cookie=cookie)[0] == 200
        _sessions_remade(site)
        assert _request(site, cookie=cookie)[0] == 401
        assert _request(site, cookie=cookie, password=PASSWORD)[0] == 401
        fresh = _login(site, "a new password")
        assert _request(site, cookie=fresh)[0] == 200
        htpasswd.write_bytes(old + b"\n")  # any change of the file, even one that changes no password
        _sessions_remade(site)
        assert _request(site, cookie=fresh)[0] == 401
    finally:
        htpasswd.write_bytes(old)
        _sessions_remade(site)


def test_without_the_key_there_is_no_session_and_the_login_still_works(site):
    key = site["out"] / layout.SESSION_KEY.lstrip("/")
    cookie, saved = _login(site), key.read_bytes()
    key.unlink()
    _sessions_remade(site)
    try:
        assert _request(site, cookie=cookie)[0] == 401
        status, headers, _ = _request(site, cookie=cookie, password=PASSWORD)
        assert status == 200 and not _session_cookies(headers)  # every request asks the verifier, as before
        key.write_bytes(saved[:16])  # too short to be a key: refused both ways
        _sessions_remade(site)
        assert _request(site, cookie=_cookie(site, key=saved[:16]))[0] == 401
        assert not _session_cookies(_request(site, password=PASSWORD)[1])
    finally:
        key.write_bytes(saved)
        _sessions_remade(site)
    assert _request(site, cookie=cookie)[0] == 200


def test_a_token_never_takes_the_session_path(site, token):
    cookie = _login(site)
    before = _answered(site)
    for path in (f"/api/status?token={token}", f"/api/status?x=1&%74oken={token}", f"/api/status?token={token}&",
                 f"/api/status?to%6Ben={token}"):
        assert _request(site, path, cookie=cookie)[0] == 200, path
    assert _request(site, "/api/status?token", cookie=cookie, source="127.0.0.40")[0] == 401  # an empty token
    assert _answered(site) == before + 5  # each one asked the verifier
    status, _, body = _request(site, "/api/me", cookie=cookie, authorization=f"token {token}")
    assert status == 200 and json.loads(body)["identity"]["name"].endswith("(token harness)")
    assert _request(site, cookie=cookie, authorization="token not-a-token", source="127.0.0.40")[0] == 401
    assert _request(site, cookie=cookie, authorization="Bearer not-a-token", source="127.0.0.40")[0] == 401
    assert _request(site, "/api/status?token=not-a-token", cookie=cookie, source="127.0.0.40")[0] == 401
    assert _request(site, "/api/contents/session-marker?%74oken=" + token, cookie=cookie)[0] == 404  # Jupyter's
    _wait(lambda: "/api/contents/session-marker" in site["jupyter_log"].read_text(), "Jupyter's log line")
    assert token not in site["jupyter_log"].read_text()


def test_a_kernel_runs_over_a_websocket_with_only_the_cookie(site):
    cookie = _login(site)
    before = _answered(site)
    status, _, body = _request(site, "/api/kernels", "POST", cookie=cookie, body=json.dumps({"name": "python3"}))
    assert status == 201
    kernel_id = json.loads(body)["id"]
    ws = websocket.create_connection(f"wss://127.0.0.1:{HTTPS}/api/kernels/{kernel_id}/channels",
                                     cookie=f"{layout.SESSION_COOKIE}={cookie}", origin=site["url"],
                                     sslopt={"ca_certs": site["ca"], "cert_reqs": ssl.CERT_REQUIRED}, timeout=60)
    try:
        assert jupyter_api.run(ws, "6*7") == "42"
    finally:
        ws.close()
    assert _request(site, f"/api/kernels/{kernel_id}", "DELETE", cookie=cookie)[0] == 204
    assert _answered(site) == before
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:  # and not without it
        websocket.create_connection(f"wss://127.0.0.1:{HTTPS}/api/kernels/{kernel_id}/channels", origin=site["url"],
                                    sslopt={"ca_certs": site["ca"], "cert_reqs": ssl.CERT_REQUIRED}, timeout=60)
    assert refused.value.status_code == 401


def test_no_login_at_all_is_answered_by_nginx(site):
    verifier = _request(site, password="a wrong password", source="127.0.0.41")  # the verifier's 401
    before = _answered(site)
    answers = [_request(site, path) for path in ("/api/status", "/lab", "/static/x.js", "/api/kernels?x=1")]
    assert _answered(site) == before
    for status, headers, _ in answers:
        assert status == 401
        assert headers.get_all("WWW-Authenticate") == verifier[1].get_all("WWW-Authenticate")
    with ThreadPoolExecutor(50) as pool:  # a flood costs the verifier nothing
        assert set(pool.map(lambda _: _request(site)[0], range(200))) == {401}
    assert _answered(site) == before


def test_the_session_check_costs_less_than_asking_the_verifier(site):
    """Keep-alive GETs of /api/status with the cookie (no subrequest) against the same with Basic only (the
    verifier asked, its answer remembered): the median per request, printed."""
    cookie = _login(site)
    ctx = ssl.create_default_context(cafile=site["ca"])
    basic = "Basic " + base64.b64encode(f"{site['cfg'].user}:{PASSWORD}".encode()).decode()

    def median_ms(headers, count=300):
        conn = http.client.HTTPSConnection("127.0.0.1", HTTPS, context=ctx, timeout=30)
        samples = []
        for _ in range(count + 20):
            started = time.perf_counter()
            conn.request("GET", "/api/status", headers=headers)
            r = conn.getresponse()
            r.read()
            assert r.status == 200
            samples.append(time.perf_counter() - started)
        conn.close()
        return sorted(samples[20:])[count // 2] * 1000

    session, verifier = median_ms({"Cookie": f"{layout.SESSION_COOKIE}={cookie}"}), median_ms({"Authorization": basic})
    print(f"\n/api/status keep-alive median: session cookie {session:.3f} ms, Basic through the verifier "
          f"{verifier:.3f} ms")
    assert session < verifier


@pytest.mark.skipif(not shutil.which("curl"), reason="needs curl (HTTP/2)")
def test_a_request_body_passes_both_ways_over_http2(site, tmp_path):
    """A browser's HTTP/2 PUT of 3 MB: through the verifier (Basic, no cookie: nginx's internal redirect to the
    named location keeps the body) and with only the cookie."""
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"type": "file", "format": "text", "content": "x" * 3_000_000}))
    for name, login in (("basic", ["-u", f"{site['cfg'].user}:{PASSWORD}", "-H", "Cookie: _xsrf=t"]),
                        ("cookie", ["-H", f"Cookie: _xsrf=t; {layout.SESSION_COOKIE}={_login(site)}"])):
        r = subprocess.run(["curl", "-s", "--http2", "--cacert", site["ca"], "-o", "/dev/null", "-w",
                            "%{http_version} %{http_code}", "-X", "PUT", "-H", "X-XSRFToken: t", *login, "--data-binary", f"@{body}", f"{site['url']}/api/contents/h2-{name}.txt"],
                           capture_output=True, text=True, timeout=60)
        assert r.stdout == "2 201", (name, r.stdout, r.stderr)
        assert (site["base"] / "notebooks" / f"h2-{name}.txt").stat().st_size == 3_000_000
