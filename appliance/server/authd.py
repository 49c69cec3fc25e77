"""The login verifier nginx asks on every request (`auth_request`).

nginx's own `auth_basic` runs bcrypt on every request inside its event loop
(~230 ms at cost 12): JupyterLab's 68-request page load took 17 s. This
verifier checks a password once with bcrypt, then remembers that the exact
Authorization header was good -- in memory only, as an HMAC under a key made
at start, never the password -- so later requests cost a dictionary lookup.

* The htpasswd file is re-read when it changes, and every remembered login is
  forgotten then: a new password ends old sessions at once. A check that was
  running against the old file when the change is seen lets no one in.
* What is throttled: a request whose Authorization header is a well-formed
  Basic login (base64 of UTF-8 "user:password", non-empty user, at most
  MAX_AUTHORIZATION characters) that is not remembered. Each such request is
  counted against its client address *before* bcrypt runs and uncounted if
  the password was right, so a client never has more than FAIL_LIMIT checks
  of wrong passwords within FAIL_WINDOW, however many it sends at once. Past
  that the client gets 403 (nginx turns it into 429) for every login, right or
  wrong, remembered or not, until the window passes. A request with no header,
  another scheme or a malformed one is answered 401 at once, never counted
  (it cannot be a password guess, so it cannot lock out a user behind the same
  address) and never hashed.
* At most BCRYPT_SLOTS bcrypt checks run at once (about one per core); others
  queue up to BCRYPT_WAIT seconds, then get 403 (429) uncounted. Remembered
  logins never queue. The failure table forgets expired entries and holds at
  most MAX_ADDRESSES addresses.

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
FAIL_LIMIT = 10          # bcrypt checks of wrong passwords per client address ...
FAIL_WINDOW = 300        # ... within this many seconds
MAX_ADDRESSES = 10_000   # client addresses counted at once; the least recently counted is forgotten first
PRUNE_EVERY = 30         # seconds between sweeps that drop every expired entry
BCRYPT_SLOTS = os.cpu_count() or 1  # bcrypt checks running at once, from all clients together
BCRYPT_WAIT = 10         # seconds a check may wait for a slot
MAX_AUTHORIZATION = 1024  # longer headers are not a login (bcrypt reads 72 bytes of a password)


class _Check:
    """One bcrypt check in flight; requests with the same header wait for its answer."""

    def __init__(self):
        self.done = threading.Event()
        self.status = 401


class Verifier:
    def __init__(self, htpasswd_path, clock=time.monotonic):
        self.path, self.clock = htpasswd_path, clock
        self.key = secrets.token_bytes(32)
        self.lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(BCRYPT_SLOTS)
        self.users, self.stamp, self.generation = {}, None, 0
        self.remembered = {}   # HMAC of the Authorization header -> expiry
        self.failures = {}     # client address -> times of its wrong or in-flight checks, least recent first
        self.checking = {}     # HMAC -> _Check, so a burst of new requests costs one bcrypt
        self.next_prune = 0
        self.dummy = bcrypt.hashpw(b"-", bcrypt.gensalt(12))  # unknown users are checked against it: same time

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
        self.generation += 1
        self.remembered.clear()

    def _recent(self, client, now):
        times = [t for t in self.failures.get(client, ()) if now - t < FAIL_WINDOW]
        if times:
            self.failures[client] = times
        else:
            self.failures.pop(client, None)
        return times

    def _prune(self, now):
        if now < self.next_prune:
            return
        self.next_prune = now + PRUNE_EVERY
        for client in list(self.failures):
            self._recent(client, now)
        for digest, expiry in list(self.remembered.items()):
            if expiry <= now:
                del self.remembered[digest]

    def _count(self, client, now):
        times = self._recent(client, now) + [now]
        self.failures.pop(client, None)
        self.failures[client] = times  # last: the most recently counted address
        while len(self.failures) > MAX_ADDRESSES:
            del self.failures[next(iter(self.failures))]

    def _uncount(self, client, now):
        times = self.failures.get(client, [])
        if now in times:
            times.remove(now)

    def check(self, authorization, client):
        """Returns 204 (let in), 401 (ask for a login) or 403 (too many wrong passwords, or too busy)."""
        credentials = _parse(authorization)
        if credentials is None:
            return 401  # not a login: nothing to check, nothing counted
        digest = hmac.new(self.key, authorization.encode(), hashlib.sha256).digest()
        now = self.clock()
        with self.lock:
            self._reload()
            self._prune(now)
            if len(self._recent(client, now)) >= FAIL_LIMIT:  # first: a throttled client learns nothing
                return 403
            if self.remembered.get(digest, 0) > now:
                return 204
            pending = self.checking.get(digest)
            if pending is None:
                pending = self.checking[digest] = _Check()
                self._count(client, now)  # before hashing: concurrent guesses cannot pass the limit
                generation, users = self.generation, self.users
                mine = True
            else:
                mine = False
        if not mine:  # the same header is being checked: its answer is this one's
            pending.done.wait()
            with self.lock:
                self._reload()
                if self.remembered.get(digest, 0) > self.clock():
                    return 204
            return 401 if pending.status == 204 else pending.status
        try:
            pending.status = self._verify(credentials, client, now, digest, generation, users)
        finally:
            with self.lock:
                self.checking.pop(digest, None)
            pending.done.set()
        return pending.status

    def _verify(self, credentials, client, now, digest, generation, users):
        user, password = credentials
        if not self.slots.acquire(timeout=BCRYPT_WAIT):
            with self.lock:
                self._uncount(client, now)  # nothing was checked
            return 403
        try:
            ok = _password_ok(users.get(user), password, self.dummy)
        finally:
            self.slots.release()
        with self.lock:
            self._reload()  # a password change during the check is seen here
            if ok:
                self._uncount(client, now)
                if generation != self.generation:
                    return 401  # right for the file that has just been replaced
                if len(self.remembered) >= MAX_REMEMBERED:
                    self.remembered.clear()
                self.remembered[digest] = now + REMEMBER_SECONDS
                return 204
            return 403 if len(self._recent(client, now)) >= FAIL_LIMIT else 401


def _parse(authorization):
    """(user, password) of a well-formed Basic login, or None."""
    if len(authorization) > MAX_AUTHORIZATION or not authorization.startswith("Basic "):
        return None
    try:
        user, colon, password = base64.b64decode(authorization[6:], validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    if not user or not colon or "\0" in password:
        return None
    return user, password.encode()


def _password_ok(hashed, password, dummy):
    if hashed is None:
        bcrypt.checkpw(b"x", dummy)
        return False
    try:
        return bcrypt.checkpw(password, hashed.replace(b"$2y$", b"$2b$", 1))
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
