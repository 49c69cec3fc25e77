"""Benchmark client run INSIDE the droplet (standard library only), so that the
appliance (https://127.0.0.1:443 through nginx, TLS and the login) and Jupyter
reached directly (its unix socket) are measured from the same place.

    python3 client.py direct|appliance|interleaved --socket PATH --ca PATH [--auth-service NAME --auth-socket PATH]
                      [--upload-mb N]   (password in $APPLIANCE_PASSWORD)

--socket is Jupyter's unix socket, --ca the appliance's CA certificate on the server, --auth-service and
--auth-socket the login verifier's unit and socket (bench/run.py passes them from appliance/layout.py: this
file runs alone in the droplet). With them, each load run of the appliance says how much CPU the verifier
and nginx spent per request, and how many requests nginx asked the verifier about.

Like a browser, the client keeps the cookies it is given (the appliance's session cookie among them) and
sends them on every connection, with its Basic login too.

"interleaved" measures only the keep-alive latency of both sides, one request of each in turn.
Prints one JSON object.
"""
import base64
import http.client
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
import uuid

SOCKET = CA = AUTH_SERVICE = AUTH_SOCKET = None  # set by main() from the command line
USER = os.environ.get("APPLIANCE_USER", "ds")
COOKIES = {"_xsrf": uuid.uuid4().hex}  # the client's cookie jar, shared by its connections (as a browser's)


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, socket_path, timeout=120):
        super().__init__("127.0.0.1", timeout=timeout)
        self.socket_path = socket_path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.socket_path)


def connect(mode):
    if mode == "direct":
        return UnixConnection(SOCKET)
    ctx = ssl.create_default_context(cafile=CA)
    return http.client.HTTPSConnection("127.0.0.1", 443, context=ctx, timeout=120)


def headers(mode, login=True):
    """A browser's headers: its cookies and the XSRF header JupyterLab echoes from them, and the Basic login
    (login=False: a client with no login and no cookie)."""
    if not login:
        return {"Host": "127.0.0.1"}
    h = {"Host": "127.0.0.1", "Cookie": "; ".join(f"{k}={v}" for k, v in list(COOKIES.items())),
         "X-XSRFToken": COOKIES["_xsrf"], "Content-Type": "application/json"}
    if mode == "appliance":
        h["Authorization"] = "Basic " + base64.b64encode(f"{USER}:{os.environ['APPLIANCE_PASSWORD']}".encode()).decode()
    return h


def keep_cookies(response):
    for cookie in response.msg.get_all("Set-Cookie") or []:
        name, _, value = cookie.split(";")[0].strip().partition("=")
        COOKIES[name] = value


def request(conn, mode, method, path, body=None, login=True):
    """Seconds one request took, and its body; stops the run on an error (without login: on anything but 401)."""
    started = time.perf_counter()
    conn.request(method, path, body=body, headers=headers(mode, login))
    response = conn.getresponse()
    data = response.read()
    if response.status >= 300 if login else response.status != 401:
        raise SystemExit(f"{method} {path}: {response.status} {data[:200]!r}")
    if login:
        keep_cookies(response)
    return time.perf_counter() - started, data


def cpu_seconds(pids):
    """User + system CPU time of these processes, from /proc/<pid>/stat (a process gone counts 0)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def verifier_pids():
    """The login verifier's process (systemd's MainPID of --auth-service), or none."""
    if not AUTH_SERVICE:
        return []
    out = subprocess.run(["systemctl", "show", "--property=MainPID", "--value", AUTH_SERVICE], capture_output=True,
                         text=True).stdout.strip()
    return [int(out)] if out.isdigit() and out != "0" else []


def nginx_pids():
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "nginx":
                    pids.append(int(pid))
        except OSError:
            continue
    return pids


def verifier_answered():
    """How many requests nginx has asked the verifier about (its socket's /answered), or None."""
    if not AUTH_SOCKET:
        return None
    conn = UnixConnection(AUTH_SOCKET, timeout=10)
    try:
        conn.request("GET", "/answered")
        return json.loads(conn.getresponse().read())["answered"]
    finally:
        conn.close()


def percentiles(samples):
    ms = sorted(s * 1000 for s in samples)
    return {"p50_ms": round(statistics.median(ms), 3), "p99_ms": round(ms[int(len(ms) * 0.99) - 1], 3)}


def latency(mode, path, count=500):
    conn = connect(mode)
    request(conn, mode, "GET", path)  # the first one pays for the TLS handshake and the login
    samples = [request(conn, mode, "GET", path)[0] for _ in range(count)]
    return {**percentiles(samples), "samples_ms": [round(s * 1000, 3) for s in samples]}


def throughput(mode, path, clients=20, seconds=5.0, login=True):
    """Requests per second and latency of `clients` keep-alive connections for `seconds`; for the appliance
    also the verifier's and nginx's CPU per request (µs) and the verifier's requests per request."""
    done, samples, lock, deadline = [], [], threading.Lock(), []
    warm = threading.Barrier(clients + 1, timeout=120)

    def worker():
        conn = connect(mode)
        request(conn, mode, "GET", path, login=login)
        warm.wait()
        mine = []
        while time.perf_counter() < deadline[0]:
            mine.append(request(conn, mode, "GET", path, login=login)[0])
        with lock:
            samples.extend(mine)
            done.append(len(mine))

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    while warm.n_waiting < clients and all(t.is_alive() for t in threads):
        time.sleep(0.01)  # every connection made and logged in: only the load is measured
    verifier, nginx = (verifier_pids(), nginx_pids()) if mode == "appliance" else ([], [])
    answered = verifier_answered() if mode == "appliance" else None
    cpu, started = (cpu_seconds(verifier), cpu_seconds(nginx)), time.perf_counter()
    deadline.append(started + seconds)
    warm.wait()
    for t in threads:
        t.join()
    elapsed, count = time.perf_counter() - started, sum(done)
    result = {"rps": round(count / elapsed, 1), **percentiles(samples)}
    if verifier:
        result["verifier_cpu_us_per_request"] = round((cpu_seconds(verifier) - cpu[0]) * 1e6 / count, 1)
    if nginx:
        result["nginx_cpu_us_per_request"] = round((cpu_seconds(nginx) - cpu[1]) * 1e6 / count, 1)
    if answered is not None:
        result["verifier_asked_per_request"] = round((verifier_answered() - answered) / count, 3)
    return result


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
             "Origin: https://127.0.0.1", f"Cookie: {h['Cookie']}"]  # the session cookie too
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


def interleaved(path, count=1000):
    """Keep-alive latency of both sides at once: one request direct, one through the appliance, in turn, so
    that whatever the machine does meanwhile falls on both alike."""
    conns = {mode: connect(mode) for mode in ("appliance", "direct")}
    for mode, conn in conns.items():
        request(conn, mode, "GET", path)  # the TLS handshake and the login
    samples = {mode: [] for mode in conns}
    for _ in range(count):
        for mode, conn in conns.items():
            samples[mode].append(request(conn, mode, "GET", path)[0])
    return {mode: percentiles(each) for mode, each in samples.items()}


def main():
    global SOCKET, CA, AUTH_SERVICE, AUTH_SOCKET
    mode = sys.argv[1]
    def option(name, default=None):
        return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default
    SOCKET, CA = option("--socket"), option("--ca")
    AUTH_SERVICE, AUTH_SOCKET = option("--auth-service"), option("--auth-socket")
    megabytes = int(option("--upload-mb", 1024))
    if mode == "interleaved":
        print(json.dumps({"status": interleaved("/api/status"), "contents": interleaved("/api/contents")}))
        return
    result = {
        "status_keepalive": latency(mode, "/api/status"),
        "contents_keepalive": latency(mode, "/api/contents"),
        "status_20_clients": throughput(mode, "/api/status"),
        "contents_20_clients": throughput(mode, "/api/contents"),
        "status_50_clients": throughput(mode, "/api/status", clients=50),
        "kernel_roundtrip": kernel_roundtrip(mode),
        "upload": upload(mode, megabytes),
    }
    if mode == "appliance":  # requests with no login at all (a flood of 401s)
        result["no_login_50_clients"] = throughput(mode, "/api/status", clients=50, login=False)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
