"""Waiting for a new cloud server's sshd: a port that accepts and then drops the connection is not sshd."""
import socket
import threading

import pytest

from appliance import cloud
from appliance.errors import CloudError


def listener(greeting):
    server = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            if greeting:
                conn.sendall(greeting)
            conn.close()  # a proxy in front of a server still booting: accepted, then closed
    threading.Thread(target=serve, daemon=True).start()
    return server


@pytest.mark.parametrize("greeting, ready", [(b"SSH-2.0-OpenSSH_9.2p1\r\n", True), (b"", False), (b"HTTP/1.1", False)])
def test_only_an_ssh_greeting_counts(monkeypatch, greeting, ready):
    monkeypatch.setattr(cloud, "POLL", 0.05)
    server = listener(greeting)
    try:
        if ready:
            cloud.wait_for_ssh("127.0.0.1", server.getsockname()[1], say=lambda msg: None, timeout=5)
        else:
            with pytest.raises(CloudError, match="still no SSH greeting yet after 1 s"):
                cloud.wait_for_ssh("127.0.0.1", server.getsockname()[1], say=lambda msg: None, timeout=1)
    finally:
        server.close()
