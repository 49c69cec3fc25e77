"""Benchmark client run INSIDE the droplet (standard library only), so that the
appliance (https://127.0.0.1:443 through nginx, TLS and the login) and Jupyter
reached directly (its unix socket) are measured from the same place.

    python3 client.py direct|appliance --socket PATH --ca PATH [--upload-mb N]   (password in $APPLIANCE_PASSWORD)

--socket is Jupyter's unix socket, --ca the appliance's CA certificate on the server (bench/run.py
passes both from appliance/layout.py: this file runs alone in the droplet).

Prints one JSON object.
"""
import base64
import http.client
import json
import os
import socket
import ssl
import statistics
import sys
import threading
import time
import uuid

SOCKET = CA = None  # set by main() from the command line
USER = os.environ.get("APPLIANCE_USER", "ds")
XSRF = uuid.uuid4().hex


class UnixConnection(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(SOCKET)


def connect(mode):
    if mode == "direct":
        return UnixConnection("127.0.0.1", timeout=120)
    ctx = ssl.create_default_context(cafile=CA)
    return http.client.HTTPSConnection("127.0.0.1", 443, context=ctx, timeout=120)


def headers(mode):
    h = {"Host": "127.0.0.1", "Cookie": f"_xsrf={XSRF}", "X-XSRFToken": XSRF, "Content-Type": "application/json"}
    if mode == "appliance":
        h["Authorization"] = "Basic " + base64.b64encode(f"{USER}:{os.environ['APPLIANCE_PASSWORD']}".encode()).decode()
    return h


def request(conn, mode, method, path, body=None):
    started = time.perf_counter()
    conn.request(method, path, body=body, headers=headers(mode))
    response = conn.getresponse()
    data = response.read()
    if response.status >= 300:
        raise SystemExit(f"{method} {path}: {response.status} {data[:200]!r}")
    return time.perf_counter() - started, data


def percentiles(samples):
    ms = sorted(s * 1000 for s in samples)
    return {"p50_ms": round(statistics.median(ms), 3), "p99_ms": round(ms[int(len(ms) * 0.99) - 1], 3)}


def latency(mode, path, count=500):
    conn = connect(mode)
    request(conn, mode, "GET", path)  # the first one pays for the TLS handshake and the login
    samples = [request(conn, mode, "GET", path)[0] for _ in range(count)]
    return {**percentiles(samples), "samples_ms": [round(s * 1000, 3) for s in samples]}


def throughput(mode, path, clients=20, seconds=5.0):
    done, samples, lock = [], [], threading.Lock()
    deadline = time.perf_counter() + seconds

    def worker():
        conn = connect(mode)
        request(conn, mode, "GET", path)
        mine = []
        while time.perf_counter() < deadline:
            mine.append(request(conn, mode, "GET", path)[0])
        with lock:
            samples.extend(mine)
            done.append(len(mine))

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"rps": round(sum(done) / (time.perf_counter() - started), 1), **percentiles(samples)}


def _ws_frame(payload):
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
                            if n < 65536 else bytes([0x80 | 127]) + n.to_bytes(8, "big"))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _ws_read(sock_file):
    first, second = sock_file.read(2)
    n = second & 0x7F
    if n == 126:
        n = int.from_bytes(sock_file.read(2), "big")
    elif n == 127:
        n = int.from_bytes(sock_file.read(8), "big")
    return first & 0x0F, sock_file.read(n)


def kernel_roundtrip(mode, count=50):
    conn = connect(mode)
    _, data = request(conn, mode, "POST", "/api/kernels", json.dumps({"name": "python3"}))
    kernel = json.loads(data)["id"]
    conn.close()
    conn = connect(mode)
    conn.connect()
    sock = conn.sock
    key = base64.b64encode(os.urandom(16)).decode()
    h = headers(mode)
    lines = [f"GET /api/kernels/{kernel}/channels HTTP/1.1", f"Host: {h['Host']}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
             "Origin: https://127.0.0.1", f"Cookie: {h['Cookie']}"]
    if "Authorization" in h:
        lines.append(f"Authorization: {h['Authorization']}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    f = sock.makefile("rb")
    status = f.readline()
    if b" 101 " not in status:
        raise SystemExit(f"websocket refused: {status!r}")
    while f.readline() not in (b"\r\n", b""):
        pass
    session = uuid.uuid4().hex
    samples = []
    for i in range(count + 3):
        msg_id = uuid.uuid4().hex
        msg = {"header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "bench", "session": session,
                          "version": "5.3"}, "parent_header": {}, "metadata": {}, "channel": "shell",
               "content": {"code": "6*7", "silent": False, "store_history": False, "user_expressions": {},
                           "allow_stdin": False}}
        started = time.perf_counter()
        sock.sendall(_ws_frame(json.dumps(msg).encode()))
        while True:
            opcode, payload = _ws_read(f)
            if opcode != 1:
                continue
            reply = json.loads(payload)
            if reply.get("parent_header", {}).get("msg_id") == msg_id and reply["msg_type"] == "execute_reply":
                break
        if i >= 3:  # the first few warm the kernel up
            samples.append(time.perf_counter() - started)
    sock.close()
    conn = connect(mode)
    request(conn, mode, "DELETE", f"/api/kernels/{kernel}")
    return percentiles(samples)


def upload(mode, megabytes):
    conn = connect(mode)
    name = f"bench-upload-{mode}.bin"
    chunk = base64.b64encode(os.urandom(1 << 20)).decode()
    started = time.perf_counter()
    for i in range(1, megabytes + 1):
        number = -1 if i == megabytes else i
        body = json.dumps({"type": "file", "format": "base64", "chunk": number, "content": chunk, "name": name,
                           "path": name})
        request(conn, mode, "PUT", f"/api/contents/{name}", body)
    seconds = time.perf_counter() - started
    request(conn, mode, "DELETE", f"/api/contents/{name}")
    return {"mb_per_s": round(megabytes * 1.048576 / seconds, 1), "seconds": round(seconds, 1)}


def main():
    global SOCKET, CA
    mode = sys.argv[1]
    SOCKET = sys.argv[sys.argv.index("--socket") + 1]
    CA = sys.argv[sys.argv.index("--ca") + 1]
    megabytes = int(sys.argv[sys.argv.index("--upload-mb") + 1]) if "--upload-mb" in sys.argv else 1024
    result = {
        "status_keepalive": latency(mode, "/api/status"),
        "contents_keepalive": latency(mode, "/api/contents"),
        "status_20_clients": throughput(mode, "/api/status"),
        "contents_20_clients": throughput(mode, "/api/contents"),
        "kernel_roundtrip": kernel_roundtrip(mode),
        "upload": upload(mode, megabytes),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
