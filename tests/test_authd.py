"""The login verifier: one bcrypt per login, not per request."""
import base64
from concurrent.futures import ThreadPoolExecutor

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
