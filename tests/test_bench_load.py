"""bench/load.py reads what wrk prints: a real wrk against a small server on 127.0.0.1."""
import http.server
import importlib.util
import subprocess
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("bench_load", ROOT / "bench" / "load.py")
load = importlib.util.module_from_spec(spec)
spec.loader.exec_module(load)


class Server(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        status = 200 if self.path == "/ok" or self.headers.get("Cookie") == "s=1" else 401
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Server)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def wrk(url, *extra):
    return subprocess.run(["wrk", "-t", "1", "-c", "4", "-d", "1s", "--latency", *extra, url], capture_output=True,
                          text=True, check=True).stdout


def test_figures_of_a_run_that_only_succeeds(server):
    figures = load.parse(wrk(f"{server}/ok"))
    assert figures["requests"] > 10 and figures["rps"] > 10 and figures["non_2xx_3xx"] == 0
    assert 0 < figures["p50_ms"] <= figures["p99_ms"] and sum(figures["socket_errors"].values()) == 0


def test_401s_are_counted_and_headers_come_from_the_lua_file(server, tmp_path):
    figures = load.parse(wrk(f"{server}/api"))
    assert figures["non_2xx_3xx"] == figures["requests"] > 10
    script = tmp_path / "headers.lua"
    script.write_text('wrk.headers["Cookie"] = "s=1"\n')
    assert load.parse(wrk(f"{server}/api", "-s", str(script)))["non_2xx_3xx"] == 0
