"""Docker HEALTHCHECK: Jupyter answers GET /api/status on its unix socket."""
import http.client
import socket
import sys

SOCKET = "/run/jupyter/jupyter.sock"


class UnixConnection(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(SOCKET)


try:
    conn = UnixConnection("localhost", timeout=4)
    conn.request("GET", "/api/status", headers={"Host": "localhost"})
    sys.exit(0 if conn.getresponse().status == 200 else 1)
except OSError:
    sys.exit(1)
