"""The login verifier: one bcrypt per login, not per request."""
import base64
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait

import bcrypt
import pytest
from passlib.apache import HtpasswdFile
from passlib.context import CryptContext

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
