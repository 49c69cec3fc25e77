"""The private CA can sign only for the appliance: checked by the openssl CLI, not by our own code."""
import datetime
import ipaddress
import os
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance import tls
from appliance.state import State

NAMES = ("nb.example.org", "192.0.2.1")
# (the appliance's names, as config.server_names gives them; names the CA must not sign for)
CASES = [(NAMES, ["www.example.com", "example.org", "org", "192.0.2.2", "2001:db8::1", "localhost"]),
         (("192.0.2.1",), ["www.example.com", "192.0.2.2", "192.0.2.0", "2001:db8::1"]),  # an IP and nothing else
         (("nb.example.org",), ["www.example.com", "192.0.2.1", "::1"]),  # a DNS name and nothing else
         (("2001:db8::5",), ["www.example.com", "2001:db8::6", "192.0.2.1"]),
         (("127.0.0.1", "localhost"), ["www.example.com", "10.0.0.1", "::1"])]  # the local droplet


@pytest.fixture(autouse=True)
def passphrases(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "config" / "jupyter-appliance" / "ca-passphrases"


def _ca_key(state):
    """The CA key as whoever holds the state directory and the passphrase file can read it."""
    data = state.read("ca.key")
    if b"ENCRYPTED" not in data:
        return serialization.load_pem_private_key(data, password=None)
    ski = x509.load_pem_x509_certificate(state.read("ca.crt")).extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier).value.digest
    passphrase = (tls.passphrase_dir() / f"{ski.hex()}.pass").read_bytes()
    return serialization.load_pem_private_key(data, password=passphrase)


def _leaf(state, tmp_path, name):
    """A server certificate for `name` signed with the state's CA key, as anyone holding that key could."""
    ca_cert = x509.load_pem_x509_certificate(state.read("ca.crt"))
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        san = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        san = x509.DNSName(name)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "someone else")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(_ca_key(state), hashes.SHA256()))
    path = tmp_path / f"leaf-{name}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _verify(state, cert_path):
    return subprocess.run(["openssl", "verify", "-purpose", "sslserver", "-CAfile", str(state.file("ca.crt")),
                           str(cert_path)], capture_output=True, text=True)


@pytest.mark.parametrize("names, others", CASES)
def test_ca_cannot_sign_for_other_names(tmp_path, names, others):
    state = State(tmp_path / "t").ensure()
    tls.ensure(state, names)
    for name in others:
        out = _verify(state, _leaf(state, tmp_path, name))
        assert out.returncode != 0 and "subtree violation" in out.stdout + out.stderr, (name, out.stdout + out.stderr)


@pytest.mark.parametrize("names", [names for names, _ in CASES])
def test_ca_signs_for_the_appliance(tmp_path, names):
    state = State(tmp_path / "t").ensure()
    tls.ensure(state, names)
    r = _verify(state, state.file("server.crt"))
    assert r.returncode == 0 and ": OK" in r.stdout, r.stdout + r.stderr
    for name in names:
        r = _verify(state, _leaf(state, tmp_path, name))
        assert r.returncode == 0, (name, r.stdout + r.stderr)


def _old_ca(state, names):
    """The CA the code before name constraints made: no constraints, its key in the clear."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Jupyter appliance CA for {names[0]}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    state.write("ca.key", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()), secret=True)
    state.write("ca.crt", cert.public_bytes(serialization.Encoding.PEM))


def test_unconstrained_ca_is_replaced(tmp_path):
    state = State(tmp_path / "t").ensure()
    _old_ca(state, NAMES)
    old_crt, said = state.read("ca.crt"), []
    tls.ensure(state, NAMES, say=said.append)
    assert state.read("ca.crt") != old_crt and len(said) == 1 and "no name constraints" in said[0]
    assert _verify(state, state.file("server.crt")).returncode == 0
    said.clear()
    tls.ensure(state, NAMES, say=said.append)  # now current: kept, nothing said
    assert said == []


def test_new_name_means_new_ca_key(tmp_path):
    state = State(tmp_path / "t").ensure()
    tls.ensure(state, ("192.0.2.1",))
    before, said = state.read("ca.key"), []
    tls.ensure(state, NAMES, say=said.append)
    assert state.read("ca.key") != before and "not exactly nb.example.org, 192.0.2.1" in said[0]
    assert _verify(state, state.file("server.crt")).returncode == 0


def test_ca_key_is_encrypted_and_its_passphrase_kept_elsewhere(tmp_path, passphrases):
    state = State(tmp_path / "t").ensure()
    tls.ensure(state, NAMES)
    data = state.read("ca.key")
    assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(TypeError):  # useless without the passphrase
        serialization.load_pem_private_key(data, password=None)
    assert _ca_key(state).public_key() == x509.load_pem_x509_certificate(state.read("ca.crt")).public_key()
    (passfile,) = passphrases.iterdir()
    assert stat.S_IMODE(os.stat(passfile).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(passphrases).st_mode) == 0o700
    assert not passfile.is_relative_to(state.path)
    passfile.unlink()  # e.g. the state directory was copied to another machine without it
    old_crt, said = state.read("ca.crt"), []
    tls.ensure(state, NAMES, say=said.append)
    assert state.read("ca.crt") != old_crt and "passphrase file" in said[0] and "is missing" in said[0]
    assert _verify(state, state.file("server.crt")).returncode == 0
