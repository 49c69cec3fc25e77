"""The login verifier: one bcrypt per login, not per request."""
import base64
import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import bcrypt
import pytest
from passlib.apache import HtpasswdFile
from passlib.context import CryptContext

from appliance import layout
from appliance.server import authd


@pytest.fixture
def verifier(tmp_path, monkeypatch):
    path = tmp_path / "htpasswd"
    ht = HtpasswdFile(new=True, context=CryptContext(["bcrypt"], bcrypt__ident="2y", bcrypt__default_rounds=12))
    ht.set_password("ds", "right password")
    path.write_bytes(ht.to_string())
    v = authd.Verifier(str(path))
    calls = []
    real = bcrypt.checkpw
    monkeypatch.setattr(authd.bcrypt, "checkpw", lambda pw, h: calls.append(1) or real(pw, h))
    return v, calls


def header(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_one_bcrypt_for_a_burst_and_none_after(verifier):
    v, calls = verifier
    with ThreadPoolExecutor(16) as pool:  # JupyterLab's page load: dozens of requests at once
        statuses = list(pool.map(lambda _: v.check(header("ds", "right password"), "10.0.0.1"), range(68)))
    assert statuses == [204] * 68
    assert len(calls) == 1
    assert all(v.check(header("ds", "right password"), "10.0.0.1") == 204 for _ in range(100))
    assert len(calls) == 1
    assert b"right password" not in b"".join(v.remembered)  # only keyed digests are kept


def test_wrong_user_or_password_or_scheme(verifier):
    v, _ = verifier
    assert v.check(header("ds", "wrong password"), "10.0.0.2") == 401
    assert v.check(header("eve", "right password"), "10.0.0.2") == 401
    assert v.check("Bearer abc", "10.0.0.2") == 401
    assert v.check("Basic %%%", "10.0.0.2") == 401
    assert v.check("", "10.0.0.2") == 401


class Gate:
    """bcrypt.checkpw holding every check until opened; counts the checks and the most running at once."""

    def __init__(self, monkeypatch):
        self.open, self.lock = threading.Event(), threading.Lock()
        self.calls = self.running = self.most = 0
        real = bcrypt.checkpw

        def checkpw(password, hashed):
            with self.lock:
                self.calls += 1
                self.running += 1
                self.most = max(self.most, self.running)
            try:
                self.open.wait(60)
                return real(password, hashed)
            finally:
                with self.lock:
                    self.running -= 1
        monkeypatch.setattr(authd.bcrypt, "checkpw", checkpw)


def test_a_burst_of_guesses_from_one_address_runs_at_most_the_limit(verifier, monkeypatch):
    """Counted before hashing: with 100 guesses in flight, FAIL_LIMIT are checked, the rest refused at once."""
    v, _ = verifier
    gate = Gate(monkeypatch)
    with ThreadPoolExecutor(101) as pool:
        burst = [pool.submit(v.check, header("ds", f"guess {i}"), "10.0.0.9") for i in range(100)]
        _wait_for(lambda: sum(f.done() for f in burst) >= 100 - authd.FAIL_LIMIT, "the refusals")
        assert pool.submit(v.check, header("ds", "right password"), "10.0.0.9").result(timeout=5) == 403
        gate.open.set()
        statuses = [f.result() for f in burst]
    assert v.check(header("ds", "right password"), "10.0.0.10") == 204  # another address is let in
    assert gate.calls == authd.FAIL_LIMIT + 1
    assert set(statuses) <= {401, 403} and statuses.count(401) <= authd.FAIL_LIMIT
    assert v.check(header("ds", "right password"), "10.0.0.9") == 403  # for the whole window


def test_the_same_wrong_header_at_once_costs_one_check(verifier):
    v, calls = verifier
    with ThreadPoolExecutor(30) as pool:
        statuses = list(pool.map(lambda _: v.check(header("ds", "wrong"), "10.0.0.11"), range(30)))
    assert statuses == [401] * 30 and len(calls) == 1


def test_bcrypt_work_is_capped_and_remembered_logins_do_not_wait(verifier, monkeypatch):
    v, _ = verifier
    assert v.check(header("ds", "right password"), "10.0.1.1") == 204
    gate = Gate(monkeypatch)
    monkeypatch.setattr(authd, "BCRYPT_WAIT", 0.5, raising=False)
    cores = os.cpu_count() or 1  # the cap: about one check per core
    clients = 4 * cores
    with ThreadPoolExecutor(clients) as pool:
        burst = [pool.submit(v.check, header("ds", f"wrong {i}"), f"10.0.2.{i}") for i in range(clients)]
        _wait_for(lambda: gate.running >= cores, "the checks")
        time.sleep(0.3)
        assert gate.running == cores  # the others wait for a slot
        started = time.monotonic()
        assert v.check(header("ds", "right password"), "10.0.3.1") == 204  # remembered: no bcrypt, no queue
        assert time.monotonic() - started < 0.1
        assert v.check(header("ds", "wrong again"), "10.0.3.2") == 403  # no slot within BCRYPT_WAIT: 429
        gate.open.set()
        wait(burst, timeout=60)
    assert gate.most == cores
    # the refused check was not counted: 10.0.3.2 still has FAIL_LIMIT - 1 guesses before the last one
    assert [v.check(header("ds", f"w{i}"), "10.0.3.2") for i in range(authd.FAIL_LIMIT)] == \
        [401] * (authd.FAIL_LIMIT - 1) + [403]


def test_malformed_headers_are_not_counted_against_the_address(verifier):
    v, calls = verifier
    b64 = lambda raw: "Basic " + base64.b64encode(raw).decode()  # noqa: E731
    malformed = ["", "Bearer abc", "basic " + header("ds", "x")[6:], "Basic", "Basic ", "Basic %%%", "Basic ZHM6eA",
                 b64(b"no colon"), b64(b":no user"), b64(b"ds:\xff\xfe"), b64(b"\xe9:x"), b64(b"ds:nul\0byte"),
                 header("ds", "x" * 1000), "Basic " + "A" * 5000, "Basic \u00e9\u00e9\u00e9\u00e9"]
    for _ in range(authd.FAIL_LIMIT + 1):
        assert [v.check(h, "10.0.4.1") for h in malformed] == [401] * len(malformed)
    assert not calls  # none was hashed
    assert v.check(header("ds", "right password"), "10.0.4.1") == 204


def test_a_password_change_during_a_check_lets_no_one_in(verifier, monkeypatch, tmp_path):
    v, _ = verifier
    gate = Gate(monkeypatch)
    with ThreadPoolExecutor(1) as pool:
        old = pool.submit(v.check, header("ds", "right password"), "10.0.5.1")
        _wait_for(lambda: gate.running == 1, "the check")
        ht = HtpasswdFile(new=True, context=CryptContext(["bcrypt"], bcrypt__ident="2y", bcrypt__default_rounds=4))
        ht.set_password("ds", "new password")
        (tmp_path / "new").write_bytes(ht.to_string())
        os.replace(tmp_path / "new", tmp_path / "htpasswd")  # as `passwd` does
        gate.open.set()
        assert old.result(timeout=30) == 401  # it started against the old file: not let in, not remembered
    assert v.check(header("ds", "right password"), "10.0.5.1") == 401
    assert v.check(header("ds", "new password"), "10.0.5.1") == 204


def test_the_failure_table_is_bounded(verifier, monkeypatch):
    v, _ = verifier
    now = [1000.0]
    v.clock = lambda: now[0]
    v.dummy = bcrypt.hashpw(b"-", bcrypt.gensalt(4))  # unknown users are checked against it: fast
    monkeypatch.setattr(authd, "MAX_ADDRESSES", 50, raising=False)
    for i in range(200):
        assert v.check(header("eve", "guess"), f"10.0.6.{i}") == 401
    assert len(v.failures) == 50  # the least recently counted addresses were forgotten
    assert "10.0.6.199" in v.failures and "10.0.6.0" not in v.failures
    now[0] += authd.FAIL_WINDOW + 60
    assert v.check(header("eve", "guess"), "10.0.7.1") == 401
    assert list(v.failures) == ["10.0.7.1"]  # every expired entry is gone, not only the asked-for address's


def _wait_for(check, what, timeout=20):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# Tokens -----------------------------------------------------------------------------------------------------

def _write_tokens(path, *entries):
    """The token file as `provision.py token` leaves it: (token, name, expires) -> hash, name, expiry."""
    tokens = [{"name": name, "sha256": hashlib.sha256(token.encode()).hexdigest(), "created": 1, "expires": expires}
              for token, name, expires in entries]
    tmp = path.with_suffix(".new")
    tmp.write_text(json.dumps({"tokens": tokens}))
    os.replace(tmp, path)  # as remote.py does


@pytest.fixture
def tokens(verifier, tmp_path):
    v, calls = verifier
    v.tokens_path = str(tmp_path / "tokens.json")
    _write_tokens(tmp_path / "tokens.json", ("good-token", "laptop", None), ("old-token", "old", time.time() - 1),
                  ("later-token", "later", time.time() + 3600))
    return v, calls, tmp_path / "tokens.json"


def test_a_token_in_the_header_or_the_query(tokens):
    v, calls, _ = tokens
    assert v.verify("token good-token", "10.1.0.1") == (204, "laptop")
    assert v.verify("Bearer later-token", "10.1.0.1") == (204, "later")
    assert v.verify("", "10.1.0.1", "/api/kernels/x/channels?session_id=1&token=good-token") == (204, "laptop")
    assert v.verify("", "10.1.0.1", "/lab?token=later-token") == (204, "later")
    assert v.verify("", "10.1.0.1", "/api/status") == (401, None)  # no credentials at all: not a guess
    assert set(v.last_used) == {"laptop", "later"}
    assert not calls  # no bcrypt for tokens
    # a Basic header means a password login, whatever the URI says
    assert v.verify(header("ds", "right password"), "10.1.0.1", "/lab?token=nonsense") == (204, None)
    assert v.verify(header("ds", "wrong"), "10.1.0.1", "/lab?token=good-token") == (401, None)


def test_wrong_expired_and_revoked_tokens_are_refused_and_counted(tokens):
    v, _, path = tokens
    assert v.verify("token old-token", "10.1.1.1") == (401, None)  # expired
    assert v.verify("token nope", "10.1.1.1") == (401, None)
    assert v.verify("", "10.1.1.1", "/?token=") == (401, None)
    assert len(v.failures["10.1.1.1"]) == 3
    _write_tokens(path, ("later-token", "later", time.time() + 3600))  # laptop revoked
    assert v.verify("token good-token", "10.1.1.2") == (401, None)  # at once: the file is re-read
    assert v.verify("token later-token", "10.1.1.2") == (204, "later")


def test_token_guesses_are_throttled_like_passwords(tokens):
    v, _, _ = tokens
    guesses = [v.verify(f"token guess-{i}", "10.1.2.1")[0] for i in range(authd.FAIL_LIMIT)]
    assert guesses == [401] * (authd.FAIL_LIMIT - 1) + [403]
    assert v.verify("token good-token", "10.1.2.1") == (403, None)  # even the right token, for the window
    assert v.check(header("ds", "right password"), "10.1.2.1") == 403  # and the password: one count per address
    assert v.verify("token good-token", "10.1.2.2") == (204, "laptop")  # another address is not affected
    with ThreadPoolExecutor(50) as pool:  # a burst at once cannot pass the limit either
        burst = list(pool.map(lambda i: v.verify(f"token burst-{i}", "10.1.2.3")[0], range(50)))
    assert burst.count(401) == authd.FAIL_LIMIT - 1 and burst.count(403) == 50 - authd.FAIL_LIMIT + 1


def test_a_token_file_that_does_not_parse_lets_no_token_in(tokens):
    v, _, path = tokens
    path.write_text('{"tokens": [{"name": "x"')
    assert v.verify("token good-token", "10.1.3.1") == (401, None)
    path.unlink()
    assert v.verify("token good-token", "10.1.3.1") == (401, None)


def test_strip_token():
    assert authd.strip_token("/lab?token=abc") == "/lab"
    assert authd.strip_token("/api/x?session_id=1&token=abc&b=%20c") == "/api/x?session_id=1&b=%20c"
    assert authd.strip_token("/a?%74oken=abc&token=d&tokens=e") == "/a?tokens=e"  # an encoded name too
    assert authd.strip_token("/a?x=token%3Dabc") == "/a?x=token%3Dabc"
    assert authd.strip_token("/a%3Ftoken=1") == "/a%3Ftoken=1"


# Session cookies --------------------------------------------------------------------------------------------

@pytest.fixture
def sessions(tokens, tmp_path):
    v, calls, _ = tokens
    key = tmp_path / "session.key"
    key.write_bytes(os.urandom(authd.SESSION_KEY_BYTES))
    v.session_key_path, v.wall = str(key), lambda: 1_000_000.0
    return v, key, tmp_path / "htpasswd"


def _cookie_value(set_cookie):
    name, _, rest = set_cookie.partition("=")
    assert name == authd.SESSION_COOKIE
    return rest.split(";")[0]


def test_a_password_login_gets_a_session_cookie(sessions):
    v, key, htpasswd = sessions
    status, name, set_cookie = v.login(header("ds", "right password"), "10.2.0.1")
    assert (status, name) == (204, None)
    expiry, user, mac = _cookie_value(set_cookie).split(".")
    assert (int(expiry), user) == (1_000_000 + authd.SESSION_SECONDS, "ZHM")  # base64url of "ds"
    signing = authd.signing_key(key.read_bytes(), hashlib.sha256(htpasswd.read_bytes()).digest())
    assert mac == authd.session_mac(signing, f"{expiry}.{user}")
    # the MD5 envelope nginx's secure_link computes from the site's `secure_link_md5 "<signing>${payload}<signing>"`
    assert mac == base64.urlsafe_b64encode(hashlib.md5(f"{signing}{expiry}.{user}{signing}".encode()).digest()
                                           ).rstrip(b"=").decode()
    assert set_cookie.split("; ")[1:] == [f"Max-Age={authd.SESSION_SECONDS}", "Path=/", "Secure", "HttpOnly",
                                          "SameSite=Strict"]
    assert v.login(header("ds", "right password"), "10.2.0.1")[2]  # a remembered login gets one too


def test_no_cookie_but_for_a_password_let_in(sessions):
    v, _, _ = sessions
    assert v.login(header("ds", "wrong"), "10.2.1.1") == (401, None, None)
    assert v.login("", "10.2.1.1") == (401, None, None)
    assert v.login("token good-token", "10.2.1.1") == (204, "laptop", None)
    assert v.login("", "10.2.1.1", "/lab?token=good-token") == (204, "laptop", None)
    for i in range(authd.FAIL_LIMIT):
        v.login(header("ds", f"guess {i}"), "10.2.1.2")
    assert v.login(header("ds", "right password"), "10.2.1.2") == (403, None, None)  # throttled


def test_no_cookie_without_a_key_of_full_length(sessions):
    v, key, _ = sessions
    key.write_bytes(os.urandom(authd.SESSION_KEY_BYTES - 1))
    assert v.login(header("ds", "right password"), "10.2.2.1") == (204, None, None)
    key.unlink()
    assert v.login(header("ds", "right password"), "10.2.2.1") == (204, None, None)
    v.session_key_path = None  # --session-key not given
    assert v.login(header("ds", "right password"), "10.2.2.1") == (204, None, None)


def test_a_password_change_during_a_check_issues_no_cookie(sessions, monkeypatch, tmp_path):
    v, _, htpasswd = sessions
    gate = Gate(monkeypatch)
    with ThreadPoolExecutor(1) as pool:
        old = pool.submit(v.login, header("ds", "right password"), "10.2.3.1")
        _wait_for(lambda: gate.running == 1, "the check")
        (tmp_path / "new").write_bytes(htpasswd.read_bytes() + b"\n")
        os.replace(tmp_path / "new", htpasswd)
        gate.open.set()
        assert old.result(timeout=30) == (401, None, None)
    status, _, set_cookie = v.login(header("ds", "right password"), "10.2.3.1")
    expiry, user, mac = _cookie_value(set_cookie).split(".")  # the new file's MAC
    signing = authd.signing_key(Path(v.session_key_path).read_bytes(), hashlib.sha256(htpasswd.read_bytes()).digest())
    assert mac == authd.session_mac(signing, f"{expiry}.{user}")


def test_nginx_gets_the_signing_key_for_the_files_as_they_are(sessions, tmp_path):
    v, key, htpasswd = sessions
    out = tmp_path / "session-nginx.conf"
    assert authd.nginx_secret(key, htpasswd, out)
    signing = authd.signing_key(key.read_bytes(), hashlib.sha256(htpasswd.read_bytes()).digest())
    assert f'secure_link_md5 "{signing}${{appliance_session_payload}}{signing}";' in out.read_text()
    assert out.stat().st_mode & 0o777 == 0o600
    assert not authd.nginx_secret(key, htpasswd, out)  # the same files: unchanged (nginx is not reloaded)
    htpasswd.write_bytes(htpasswd.read_bytes() + b"\n")  # any change of the file, even one that changes no password
    assert authd.nginx_secret(key, htpasswd, out) and signing not in out.read_text()
    texts = set()
    for short in (os.urandom(authd.SESSION_KEY_BYTES - 1), None):  # no usable key: a random one every time
        key.unlink()
        if short:
            key.write_bytes(short)
        assert authd.nginx_secret(key, htpasswd, out)
        texts.add(out.read_text())
    assert len(texts) == 2 and not list(tmp_path.glob("session-nginx.conf.new-*"))


def test_the_names_nginx_and_the_verifier_share():
    assert authd.SESSION_COOKIE == layout.SESSION_COOKIE
    site = (Path(authd.__file__).parents[2] / "templates/nginx-site.conf.j2").read_text()
    assert f"$upstream_http_{authd.SESSION_HEADER.lower().replace('-', '_')};" in site
