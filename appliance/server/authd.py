"""The login verifier nginx asks on every request (`auth_request`).

nginx's own `auth_basic` runs bcrypt on every request inside its event loop
(~230 ms at cost 12): JupyterLab's 68-request page load took 17 s. This
verifier checks a password once with bcrypt, then remembers that the exact
Authorization header was good -- in memory only, as an HMAC under a key made
at start, never the password -- so later requests cost a dictionary lookup.

* The htpasswd file is re-read when it changes, and every remembered login is
  forgotten then: a new password ends old sessions at once.
* Wrong passwords are counted per client address; past the limit the client
  gets 403, which nginx turns into 429, until the window passes. Requests with
  remembered credentials are never throttled, so a page load is not either.

Runs on the server with Python's standard library and bcrypt (Debian's
python3-bcrypt), listening on a unix socket only.
Usage: authd.py --htpasswd FILE --socket PATH
"""
import argparse
import base64
import hashlib
import hmac
import http.server
import os
import secrets
import socket
import socketserver
import threading
import time

import bcrypt

REMEMBER_SECONDS = 12 * 3600
MAX_REMEMBERED = 10_000
FAIL_LIMIT = 10          # wrong passwords per client address ...
FAIL_WINDOW = 300        # ... within this many seconds


class Verifier:
    def __init__(self, htpasswd_path, clock=time.monotonic):
        self.path, self.clock = htpasswd_path, clock
        self.key = secrets.token_bytes(32)
        self.lock = threading.Lock()
        self.users, self.stamp = {}, None
        self.remembered = {}   # HMAC of the Authorization header -> expiry
        self.failures = {}     # client address -> recent failure times
        self.checking = {}     # HMAC -> lock, so a burst of new requests costs one bcrypt
        self.dummy = None  # a hash to check unknown users against, so they cost the same time

    def _reload(self):
        st = os.stat(self.path)
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self.stamp:
            return
        users = {}
        with open(self.path, "rb") as f:
            for line in f:
                name, _, hashed = line.strip().partition(b":")
                if name and hashed:
                    users[name.decode()] = hashed
        self.users, self.stamp = users, stamp
        self.remembered.clear()

    def _throttled(self, client, now):
        recent = [t for t in self.failures.get(client, ()) if now - t < FAIL_WINDOW]
        self.failures[client] = recent
        if not recent:
            del self.failures[client]
        return len(recent) >= FAIL_LIMIT

    def check(self, authorization, client):
        """Returns 204 (let in), 401 (ask for a login) or 403 (too many wrong passwords)."""
        if not authorization.startswith("Basic "):
            return 401
        digest = hmac.new(self.key, authorization.encode(), hashlib.sha256).digest()
        now = self.clock()
        with self.lock:
            self._reload()
            if self._throttled(client, now):  # first: a throttled client learns nothing, right or wrong
                return 403
            if self.remembered.get(digest, 0) > now:
                return 204
            gate = self.checking.setdefault(digest, threading.Lock())
        with gate:  # concurrent requests with the same new header wait for one bcrypt
            with self.lock:
                if self.remembered.get(digest, 0) > now:
                    return 204
                users = self.users
            if self.dummy is None:
                self.dummy = bcrypt.hashpw(b"-", bcrypt.gensalt(12))
            ok = _password_ok(users, authorization, self.dummy)
            with self.lock:
                self.checking.pop(digest, None)
                if not ok:
                    self.failures.setdefault(client, []).append(now)
                    return 403 if self._throttled(client, now) else 401
                if len(self.remembered) >= MAX_REMEMBERED:
                    self.remembered.clear()
                self.remembered[digest] = now + REMEMBER_SECONDS
                return 204


def _password_ok(users, authorization, dummy):
    try:
        user, _, password = base64.b64decode(authorization[6:], validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return False
    hashed = users.get(user)
    if hashed is None:
        bcrypt.checkpw(b"x", dummy)
        return False
    try:
        return bcrypt.checkpw(password.encode(), hashed.replace(b"$2y$", b"$2b$", 1))
    except ValueError:
        return False


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    verifier = None

    def do_GET(self):
        status = self.verifier.check(self.headers.get("Authorization", ""), self.headers.get("X-Real-IP", ""))
        self.send_response(status)
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="Jupyter", charset="UTF-8"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def address_string(self):
        return "nginx"

    def log_message(self, fmt, *args):  # no request log: nothing about logins is written anywhere
        pass


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = socket.SOMAXCONN  # as systemd's socket (Backlog=); 5 would refuse a burst


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--htpasswd", required=True)
    p.add_argument("--socket", required=True)
    args = p.parse_args(argv)
    Handler.verifier = Verifier(args.htpasswd)
    Handler.verifier._reload()
    if os.environ.get("LISTEN_FDS") == "1":  # systemd socket activation: the socket outlives restarts
        server = Server(args.socket, Handler, bind_and_activate=False)
        server.socket = socket.socket(fileno=3)
    else:
        if os.path.exists(args.socket):
            os.unlink(args.socket)
        old = os.umask(0o117)  # socket 0660: nginx's group only
        server = Server(args.socket, Handler)
        os.umask(old)
    server.serve_forever()


if __name__ == "__main__":
    main()
