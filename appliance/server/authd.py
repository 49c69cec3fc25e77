"""The login verifier nginx asks (`auth_request`) about every request without a valid session cookie.

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

Session cookies (so that most requests never reach this verifier):
* When a Basic login is let in (checked with bcrypt or remembered), the answer carries SESSION_HEADER: a
  Set-Cookie value for SESSION_COOKIE, which nginx passes to the browser (`Secure; HttpOnly;
  SameSite=Strict; Path=/`, Max-Age SESSION_SECONDS). Never for a token, a 401 or a 403.
* The value is "expiry.user.mac": expiry in epoch seconds, the user in base64url, and mac = MD5 of
  signing + "expiry.user" + signing (the envelope MAC nginx's secure_link module checks), base64url, where
  signing = hex of HMAC-SHA256(session key, SHA-256 of the htpasswd file that let the login in). nginx
  checks it itself, with no script and no file read (docs/security.md, "Session cookies"): a valid cookie is
  proxied with no question to this verifier. nginx gets signing from a file made here (--nginx-secret, run
  by appliance-session.service whenever the htpasswd file or the key changes, then nginx reloads), so a new
  htpasswd ends every session at once. The session key (--session-key, SESSION_KEY_BYTES random bytes made
  on the server by the web role) is re-read for every cookie issued; without it no cookie is issued and
  nginx gets a random signing that no cookie matches.
* A request with no Authorization header, no token parameter and no valid cookie is answered 401 by nginx
  itself (the same WWW-Authenticate as here): such floods cost this verifier nothing.
* The cookie is short-lived on purpose: the browser keeps sending its Basic login, so when the cookie has
  expired that request comes here, is remembered (no bcrypt) and gets a new cookie.
* ANSWERED_PATH on the socket says how many requests nginx asked about (tests, bench/client.py).

Tokens (for tools: VS Code, a local JupyterLab, scripts) are checked here too:
* A token comes in `Authorization: token …` (or `Bearer …`), or, when the
  request has no Authorization header at all, in the URI's `token` parameter
  (nginx sends the original URI as X-Original-URI); a Basic header always
  means a password login, whatever the URI holds.
* The token file (JSON, 0640 root:www-data) holds only each token's SHA-256
  with its name, creation and expiry; it is re-read when it changes, so a
  revoked token is refused on the next request. Tokens are 256-bit random, so
  a plain SHA-256 is enough (nothing to brute-force). The lookup is a dict
  lookup by that SHA-256: what its timing could reveal is a prefix of the hash
  of the caller's own guess, which brings no one closer to a valid token (that
  needs a preimage), so it is as good as hmac.compare_digest over every entry.
* A wrong, revoked or expired token is counted against the client address at
  once, exactly like a wrong password, and a throttled address gets 403 for
  tokens too.
* A good token's answer carries TOKEN_HEADER (the token's name), which nginx
  forwards to Jupyter (its identity provider trusts only that header, which
  nginx sets on every request, overwriting any the client sent). Every answer
  that lets a request in carries URI_HEADER: the original URI without its
  `token` parameters, which nginx proxies instead, so the raw token never
  reaches Jupyter.
* The last use of each token (wall clock, memory only) is answered on the
  socket at LAST_USED_PATH; nginx only ever asks /_appliance_auth.

Runs on the server with Python's standard library and bcrypt (Debian's
python3-bcrypt), listening on a unix socket only.
Usage: authd.py --htpasswd FILE [--tokens FILE] [--session-key FILE] --socket PATH
       authd.py --htpasswd FILE --session-key FILE --nginx-secret FILE  (writes it, reloads nginx, exits)
"""
import argparse
import base64
import hashlib
import hmac
import http.server
import json
import os
import re
import secrets
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

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
TOKEN_HEADER = "X-Appliance-Token"   # the name of the token that let a request in (nginx passes it on)
SESSION_HEADER = "X-Appliance-Session"  # after a password login: the Set-Cookie value nginx passes to the browser
SESSION_COOKIE = "__Host-appliance-session"  # the session cookie, checked by nginx itself (secure_link)
SESSION_SECONDS = 15 * 60            # a session cookie's lifetime; the browser's next Basic login gets a new one
SESSION_KEY_BYTES = 32               # a shorter key file issues no cookie (and nginx accepts none)
URI_HEADER = "X-Appliance-Uri"       # the URI nginx proxies: the original one without its token parameters
LAST_USED_PATH = "/last-used"        # JSON {token name: epoch seconds}, for `provision.py token list`
ANSWERED_PATH = "/answered"          # JSON {"answered": requests nginx asked about}, for the tests and bench
_TOKEN_SCHEME = re.compile(r"(?i)(?:token|bearer)[ ]+(\S*)")


class _Check:
    """One bcrypt check in flight; requests with the same header wait for its answer."""

    def __init__(self):
        self.done = threading.Event()
        self.status = 401


class Verifier:
    def __init__(self, htpasswd_path, clock=time.monotonic, tokens_path=None, wall=time.time, session_key_path=None):
        self.path, self.clock = htpasswd_path, clock
        self.session_key_path = session_key_path
        self.tokens_path, self.wall = tokens_path, wall
        self.tokens, self.tokens_stamp = {}, None  # SHA-256 of a token -> (name, expiry epoch or None)
        self.last_used = {}  # token name -> epoch seconds of its last accepted request
        self.answered = 0    # requests nginx asked about since the start
        self.key = secrets.token_bytes(32)
        self.lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(BCRYPT_SLOTS)
        self.users, self.stamp, self.generation = {}, None, 0
        self.passwords = b""   # SHA-256 of the htpasswd file's bytes: session cookies are valid for this file only
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
            data = f.read()
        for line in data.splitlines():
            name, _, hashed = line.strip().partition(b":")
            if name and hashed:
                users[name.decode()] = hashed
        self.users, self.stamp, self.passwords = users, stamp, hashlib.sha256(data).digest()
        self.generation += 1
        self.remembered.clear()

    def _reload_tokens(self):
        try:
            st = os.stat(self.tokens_path) if self.tokens_path else None
        except FileNotFoundError:
            st = None
        stamp = st and (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self.tokens_stamp:
            return
        tokens = {}
        if stamp:
            try:
                with open(self.tokens_path, "rb") as f:
                    for t in json.load(f)["tokens"]:
                        expires = t.get("expires")
                        tokens[bytes.fromhex(t["sha256"])] = (str(t["name"]), None if expires is None else float(expires))
            except (ValueError, KeyError, TypeError):
                tokens = {}  # a file that does not parse lets no token in
        self.tokens, self.tokens_stamp = tokens, stamp

    def verify(self, authorization, client, uri=""):
        """(status, token name or None) for one request (`login` without the cookie)."""
        return self.login(authorization, client, uri)[:2]

    def login(self, authorization, client, uri=""):
        """(status, token name or None, Set-Cookie value or None) for one request: a token when the
        Authorization header has the token (or Bearer) scheme or, with no Authorization header, when the URI
        has a token parameter; otherwise the Basic login (`check`), which gets a session cookie when let in."""
        token = _token(authorization, uri)
        if token is None:
            status, passwords = self._check(authorization, client)
            return status, None, passwords and self.session_cookie(_parse(authorization)[0], passwords)
        return (*self._token_login(token, client), None)

    def _token_login(self, token, client):
        digest = hashlib.sha256(token.encode(errors="surrogateescape")).digest()
        now, wall = self.clock(), self.wall()
        with self.lock:
            self._reload_tokens()
            self._prune(now)
            if len(self._recent(client, now)) >= FAIL_LIMIT:
                return 403, None
            name, expires = self.tokens.get(digest, (None, None))
            if name is not None and (expires is None or wall < expires):
                self.last_used[name] = wall
                return 204, name
            self._count(client, now)  # a wrong, revoked or expired token: a guess like a wrong password
            return (403 if len(self._recent(client, now)) >= FAIL_LIMIT else 401), None

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
        return self._check(authorization, client)[0]

    def _check(self, authorization, client):
        """(status, the SHA-256 of the htpasswd file the login was let in by, or None when not let in)."""
        credentials = _parse(authorization)
        if credentials is None:
            return 401, None  # not a login: nothing to check, nothing counted
        digest = hmac.new(self.key, authorization.encode(), hashlib.sha256).digest()
        now = self.clock()
        with self.lock:
            self._reload()
            self._prune(now)
            if len(self._recent(client, now)) >= FAIL_LIMIT:  # first: a throttled client learns nothing
                return 403, None
            if self.remembered.get(digest, 0) > now:
                return 204, self.passwords
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
                    return 204, self.passwords
            return (401 if pending.status == 204 else pending.status), None
        passwords = None
        try:
            pending.status, passwords = self._verify(credentials, client, now, digest, generation, users)
        finally:
            with self.lock:
                self.checking.pop(digest, None)
            pending.done.set()
        return pending.status, passwords

    def _verify(self, credentials, client, now, digest, generation, users):
        user, password = credentials
        if not self.slots.acquire(timeout=BCRYPT_WAIT):
            with self.lock:
                self._uncount(client, now)  # nothing was checked
            return 403, None
        try:
            ok = _password_ok(users.get(user), password, self.dummy)
        finally:
            self.slots.release()
        with self.lock:
            self._reload()  # a password change during the check is seen here
            if ok:
                self._uncount(client, now)
                if generation != self.generation:
                    return 401, None  # right for the file that has just been replaced
                if len(self.remembered) >= MAX_REMEMBERED:
                    self.remembered.clear()
                self.remembered[digest] = now + REMEMBER_SECONDS
                return 204, self.passwords
            return (403 if len(self._recent(client, now)) >= FAIL_LIMIT else 401), None

    def session_cookie(self, user, passwords):
        """The Set-Cookie value of a new session for user, let in by the htpasswd file whose SHA-256 is
        passwords; None without a session key (no cookie: every request asks the verifier, as before)."""
        secret = _session_key(self.session_key_path)
        if secret is None:
            return None
        payload = f"{int(self.wall()) + SESSION_SECONDS}.{_b64(user.encode())}"
        return (f"{SESSION_COOKIE}={payload}.{session_mac(signing_key(secret, passwords), payload)}; "
                f"Max-Age={SESSION_SECONDS}; Path=/; Secure; HttpOnly; SameSite=Strict")


def _session_key(path):
    try:
        with open(path, "rb") as f:
            secret = f.read()
    except (OSError, TypeError):
        return None
    return secret if len(secret) >= SESSION_KEY_BYTES else None


def signing_key(secret, passwords):
    """What nginx signs with for this session key and htpasswd file (passwords: its SHA-256): 64 hex digits."""
    return hmac.new(secret, passwords, hashlib.sha256).hexdigest()


def session_mac(signing, payload):
    """The MAC of a session cookie's payload ("expiry.user") as nginx's secure_link computes it from the site's
    `secure_link_md5 "<signing>${payload}<signing>"`: MD5 of the three, base64url without padding."""
    return _b64(hashlib.md5(f"{signing}{payload}{signing}".encode()).digest())


def nginx_secret(key_path, htpasswd_path, out_path):
    """Write nginx's part of the session check (the signing key for the key and htpasswd files as they are now;
    a random one when there is no usable key: no cookie is accepted then) to out_path, root 0600, atomically;
    True when it changed."""
    secret = _session_key(key_path)
    with open(htpasswd_path, "rb") as f:
        passwords = hashlib.sha256(f.read()).digest()
    signing = signing_key(secret, passwords) if secret else secrets.token_hex(32)
    text = ("# Made by authd.py --nginx-secret from the session key and the htpasswd file: do not edit.\n"
            f'secure_link_md5 "{signing}${{appliance_session_payload}}{signing}";\n')
    try:
        with open(out_path) as f:
            if f.read() == text and secret:
                return False
    except OSError:
        pass
    tmp = f"{out_path}.new-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, out_path)
    return True


def _nginx_workers(pid_file):
    """{pid: process title} of nginx's workers (none when it does not run)."""
    try:
        with open(pid_file) as f:
            master = f.read().strip()
    except OSError:
        return {}
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[1] == master:
                found[stat.parent.name] = (stat.parent / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, IndexError):
            pass
    return found


def _systemd_reload():
    subprocess.run(["systemctl", "try-reload-or-restart", "nginx.service"], check=True)


def reload_nginx(pid_file="/run/nginx.pid", timeout=30, reload=_systemd_reload):
    """Reload nginx (when it runs; reload: how to ask it) and return once no worker of the old configuration
    takes a request any more: each has quit or is shutting down (it closed its idle keep-alive connections).
    A reload alone returns before that, and a browser's open connection would still be served with the old
    signing key. False when no new workers came within timeout."""
    old = _nginx_workers(pid_file)
    reload()
    deadline = time.monotonic() + timeout
    while old and time.monotonic() < deadline:
        now = _nginx_workers(pid_file)
        if set(now) - set(old) and all("shutting down" in now[p] for p in set(now) & set(old)):
            return True
        time.sleep(0.02)
    return not old


def _b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


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


def _token(authorization, uri):
    """The token a request presents ("" for an empty one), or None when it presents none."""
    if authorization:
        match = _TOKEN_SCHEME.fullmatch(authorization)
        return match[1] if match else None
    query = uri.partition("?")[2]
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if name == "token":
            return value
    return None


def strip_token(uri):
    """uri without its `token` query parameters (however their name is percent-encoded); the rest as it was."""
    path, mark, query = uri.partition("?")
    pieces = query.split("&")
    kept = [p for p in pieces if urllib.parse.unquote_plus(p.partition("=")[0]) != "token"]
    if len(kept) == len(pieces):
        return uri
    return f"{path}?{'&'.join(kept)}" if kept else path


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
        if self.path in (LAST_USED_PATH, ANSWERED_PATH):
            with self.verifier.lock:
                v = self.verifier
                body = json.dumps(v.last_used if self.path == LAST_USED_PATH else {"answered": v.answered}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        with self.verifier.lock:
            self.verifier.answered += 1
        uri = self.headers.get("X-Original-URI", "")
        status, name, cookie = self.verifier.login(self.headers.get("Authorization", ""),
                                                   self.headers.get("X-Real-IP", ""), uri)
        self.send_response(status)
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="Jupyter", charset="UTF-8"')
        if status == 204 and uri:
            self.send_header(URI_HEADER, strip_token(uri))
        if name:
            self.send_header(TOKEN_HEADER, name)
        if cookie:
            self.send_header(SESSION_HEADER, cookie)
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
    p.add_argument("--tokens", help="the token file (JSON; may not exist yet)")
    p.add_argument("--session-key", help="the session cookies' key file (no cookies without it)")
    p.add_argument("--socket")
    p.add_argument("--nginx-secret", metavar="FILE", help="write nginx's session check for the key and htpasswd "
                   "files as they are now to FILE, reload nginx when it changed, and exit")
    args = p.parse_args(argv)
    if args.nginx_secret:
        if nginx_secret(args.session_key, args.htpasswd, args.nginx_secret):
            print("changed")
            if not reload_nginx():
                sys.exit("nginx did not load the new session key (see its error log): old sessions may go on")
        return
    if not args.socket:
        p.error("--socket is needed to serve")
    Handler.verifier = Verifier(args.htpasswd, tokens_path=args.tokens, session_key_path=args.session_key)
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
