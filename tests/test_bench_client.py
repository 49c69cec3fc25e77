"""bench/client.py, without the droplet: the browser-like cookie jar and the verifier's figures, against a
stand-in appliance and a real login verifier on unix sockets here."""
import http.server
import importlib.util
import json
import os
import socketserver
import threading
import time
from pathlib import Path

import bcrypt
import pytest

from appliance import layout
from appliance.server import authd

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("bench_client", ROOT / "bench" / "client.py")
client = importlib.util.module_from_spec(spec)
spec.loader.exec_module(client)
SESSION = f"{layout.SESSION_COOKIE}=the-session"


class Appliance(http.server.BaseHTTPRequestHandler):
    """nginx's part: a session cookie lets in; a Basic login lets in and gets one; nothing at all is 401."""
    protocol_version = "HTTP/1.1"
    seen = []

    def do_GET(self):
        cookie, authorization = self.headers.get("Cookie", ""), self.headers.get("Authorization")
        Appliance.seen.append((authorization, cookie, self.headers.get("X-XSRFToken")))
        self.send_response(200 if SESSION in cookie or authorization else 401)
        if authorization and SESSION not in cookie:
            self.send_header("Set-Cookie", f"{SESSION}; Max-Age=900; Path=/; Secure; HttpOnly; SameSite=Strict")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def appliance(tmp_path, monkeypatch):
    path = str(tmp_path / "appliance.sock")
    server = UnixServer(path, Appliance)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Appliance.seen = []
    monkeypatch.setenv("APPLIANCE_PASSWORD", "bench password")
    monkeypatch.setattr(client, "COOKIES", {"_xsrf": "xsrf-token"})
    monkeypatch.setattr(client, "connect", lambda mode: client.UnixConnection(path))
    yield
    server.shutdown()
    server.server_close()


@pytest.fixture
def verifier(tmp_path, monkeypatch):
    """A real login verifier on a unix socket; the client is pointed at it."""
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_bytes(b"ds:" + bcrypt.hashpw(b"x", bcrypt.gensalt(4)) + b"\n")
    path = str(tmp_path / "auth.sock")
    monkeypatch.setattr(authd.Handler, "verifier", authd.Verifier(str(htpasswd)))
    server = authd.Server(path, authd.Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(client, "AUTH_SOCKET", path)
    yield path
    server.shutdown()
    server.server_close()


def test_the_client_keeps_and_sends_the_session_cookie_as_a_browser_does(appliance):
    first, second = client.connect("appliance"), client.connect("appliance")
    client.request(first, "appliance", "GET", "/api/status")
    client.request(second, "appliance", "GET", "/api/status")  # another connection: the same jar
    client.request(first, "appliance", "GET", "/api/contents")
    (basic, cookie, xsrf), *later = Appliance.seen
    assert basic.startswith("Basic ") and cookie == "_xsrf=xsrf-token" and xsrf == "xsrf-token"
    assert later == [(basic, f"_xsrf=xsrf-token; {SESSION}", "xsrf-token")] * 2  # the Basic login kept too
    client.request(first, "appliance", "GET", "/api/status", login=False)  # no login, no cookie: 401 expected
    assert Appliance.seen[-1] == (None, "", None)
    del client.COOKIES[layout.SESSION_COOKIE]
    with pytest.raises(SystemExit):  # "direct" sends no Basic login: without the cookie, the 401 stops the run
        client.request(first, "direct", "GET", "/api/status")


def test_interleaved_takes_turns_between_the_two_sides(appliance):
    result = client.interleaved("/api/status", count=20)
    assert set(result) == {"direct", "appliance"} and all(r["p50_ms"] > 0 for r in result.values())
    sent = [basic for basic, _, _ in Appliance.seen[2:]]  # after each side's first request
    assert sent[1::2] == [None] * 20 and all(b.startswith("Basic ") for b in sent[0::2])  # appliance, direct, ...


def test_a_load_run_says_what_the_verifier_spent(appliance, verifier, monkeypatch):
    monkeypatch.setattr(client, "verifier_pids", lambda: [os.getpid()])  # this process serves the verifier here
    conn = client.UnixConnection(verifier)
    for _ in range(2):  # two requests nginx would ask about
        conn.request("GET", "/_appliance_auth")
        assert conn.getresponse().read() == b""
    conn.close()
    assert client.verifier_answered() == 2
    run = client.throughput("appliance", "/api/status", clients=5, seconds=0.5)
    assert run["rps"] > 0 and run["verifier_asked_per_request"] == 0  # the stand-in never asks it
    assert run["verifier_cpu_us_per_request"] >= 0
    assert {"p50_ms", "p99_ms"} <= set(run)
    assert Appliance.seen[-1][1] == f"_xsrf=xsrf-token; {SESSION}"
    flood = client.throughput("appliance", "/api/status", clients=5, seconds=0.3, login=False)
    assert flood["rps"] > 0 and flood["verifier_asked_per_request"] == 0


def test_cpu_seconds_reads_proc():
    before = client.cpu_seconds([os.getpid()])
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    assert client.cpu_seconds([os.getpid()]) - before >= 0.1
    assert client.cpu_seconds([2 ** 22 + 1]) == 0  # a process that is gone (above pid_max) counts nothing
    assert client.verifier_pids() == []  # no --auth-service: no figure


def test_the_verifiers_answer_count_is_json(verifier):
    assert client.verifier_answered() == 0
    conn = client.UnixConnection(verifier)
    conn.request("GET", authd.LAST_USED_PATH)
    assert json.loads(conn.getresponse().read()) == {}
    conn.close()
    assert client.verifier_answered() == 0  # the figures' own requests are not counted


def test_the_report_has_the_50_client_and_verifier_figures():
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    load = {"rps": 100.0, "p50_ms": 1.0, "p99_ms": 2.0}
    measured = {**load, "verifier_cpu_us_per_request": 0.0, "verifier_asked_per_request": 0.0,
                "nginx_cpu_us_per_request": 90.0}
    result = {key: load for key in ("status_20_clients", "contents_20_clients", "status_50_clients")}
    result.update({"status_keepalive": load, "contents_keepalive": load, "kernel_roundtrip": load,
                   "upload": {"mb_per_s": 1.0}})
    appliance = {**result, "status_50_clients": measured, "no_login_50_clients": measured}
    both = {key: {"direct": load, "appliance": load} for key in ("status", "contents")}
    names = [row[0] for row in run.figures(result, appliance, both)]
    assert {"P1 /api/status req/s, 50 clients", "P1 /api/status p50, 50 clients",
            "P1 /api/status p50, keep-alive, interleaved"} <= set(names)
    assert all(name in run.GOALS for name in names if "interleaved" in name)
    assert all(name in run.GOALS for name in names if "50 clients" in name)
    extra = dict((name, value) for name, value, _ in run.load_figures(appliance))
    assert extra["P8 verifier CPU per request, /api/status, 50 clients"] == \
        "0.0 µs (asked 0.0 times per request; nginx 90.0 µs)"
    assert extra["P8 no-login requests answered, 50 clients"] == "100.0 req/s"
