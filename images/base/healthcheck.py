"""Docker HEALTHCHECK: Jupyter answers GET /api/status on its unix socket.

The socket's path comes from the image's environment (APPLIANCE_JUPYTER_SOCKET, a build argument that
appliance/images.py takes from appliance/layout.py).
"""
import http.client
import os
import socket
import sys

SOCKET = os.environ["APPLIANCE_JUPYTER_SOCKET"]


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
