"""A private CA and the server certificate it signs (ECDSA P-256).

Both live in the target's state directory and are reused on every run; the
server certificate is re-issued only when the names it must carry change or
it has less than 30 days left.

The CA can sign only for the appliance: a critical Name Constraints extension
permits exactly the appliance's names (a DNS name also covers its subdomains;
an IP address only itself), and its extended key usage is TLS server only.
When the names change, the CA is replaced by one with a new key (an old CA
certificate with the same key would otherwise stay valid in browsers), and the
user imports it again. Its key is kept encrypted in the state directory; the
random passphrase lives outside it (passphrase_dir(), 0600), named by the
CA's key identifier.
"""
import datetime
import ipaddress
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import StateError
from .state import State

CA_DAYS = 3650
SERVER_DAYS = 365
RENEW_BEFORE = datetime.timedelta(days=30)


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def passphrase_dir():
    """Where the CA keys' passphrases are kept: outside the state directory (and any project tree)."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "jupyter-appliance" / "ca-passphrases"


def _passphrase_name(ca_cert):
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    return f"{ski.hex()}.pass"


def _passphrase_file(ca_cert):
    return passphrase_dir() / _passphrase_name(ca_cert)


def _load_key(state, name):
    data = state.read(name)
    if data is None:
        return None
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise StateError(f"{state.file(name)} is not a PEM private key; move it away to start over") from None


def _new_key(state, name):
    key = ec.generate_private_key(ec.SECP256R1())
    state.write(name, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()), secret=True)
    return key


def _load_ca_key(state, ca_cert):
    """(the CA's private key or None, why an encrypted one cannot be read); a key in the clear (older
    state) is read as it is."""
    data = state.read("ca.key")
    if data is None or b"-----BEGIN ENCRYPTED PRIVATE KEY-----" not in data:
        return _load_key(state, "ca.key"), None
    if ca_cert is None:
        return None, None
    passfile = _passphrase_file(ca_cert)
    try:
        return serialization.load_pem_private_key(data, password=passfile.read_bytes()), None
    except FileNotFoundError:
        return None, f"the passphrase file of its key, {passfile}, is missing"
    except (ValueError, TypeError):
        return None, f"its key cannot be decrypted with {passfile}"


def _store_ca_key(state, key, ca_cert):
    passphrase = secrets.token_urlsafe(32).encode()
    State(passphrase_dir()).write(_passphrase_name(ca_cert), passphrase, secret=True)  # 0600 in a 0700 dir
    state.write("ca.key", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(passphrase)), secret=True)


def _load_cert(state, name):
    data = state.read(name)
    if data is None:
        return None
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise StateError(f"{state.file(name)} is not a PEM certificate; move it away to start over") from None


def _builder(subject, issuer, public_key, days):
    now = _now()
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))


def _name_constraints(names):
    """Permit each DNS name and each IP address (a single-address network); a kind of name the appliance
    does not use is excluded altogether (a zero-length dNSName, 0.0.0.0/0, ::/0 as the CA/Browser Forum's
    Baseline Requirements say for technically constrained CAs), else it would be unconstrained."""
    permitted = [x509.IPAddress(ipaddress.ip_network(n.value)) if isinstance(n, x509.IPAddress) else n
                 for n in _san(names)]
    excluded = [] if any(isinstance(p, x509.DNSName) for p in permitted) else [x509.DNSName("")]
    for everything in (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")):
        if not any(isinstance(p, x509.IPAddress) and p.value.version == everything.version for p in permitted):
            excluded.append(x509.IPAddress(everything))
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=excluded or None)


def _ca_problem(cert, key, names):
    """Why the stored CA cannot stay (None when it can)."""
    if cert.public_key() != key.public_key():
        return "its key does not match ca.key"
    if cert.not_valid_after_utc - _now() <= RENEW_BEFORE:
        return "it expires soon"
    try:
        constraints = cert.extensions.get_extension_for_class(x509.NameConstraints)
    except x509.ExtensionNotFound:
        return "it could sign for any name (no name constraints)"
    have, want = constraints.value, _name_constraints(names)
    if not constraints.critical or set(have.permitted_subtrees or ()) != set(want.permitted_subtrees) \
            or set(have.excluded_subtrees or ()) != set(want.excluded_subtrees or ()):
        return f"its name constraints are not exactly {', '.join(names)}"
    return None


def _ensure_ca(state, names, say):
    cert = _load_cert(state, "ca.crt")
    key, why = _load_ca_key(state, cert)
    if cert is not None:
        if key is not None:
            why = _ca_problem(cert, key, names)
        elif why is None:
            why = "ca.key is missing"
        if why is None:
            if b"ENCRYPTED" not in state.read("ca.key"):  # kept from before: encrypt it now
                _store_ca_key(state, key, cert)
            return key, cert
        say(f"The private CA of {names[0]} was replaced because {why}: import {state.file('ca.crt')} into "
            "your browser again and delete the old one")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Jupyter appliance"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"Jupyter appliance CA for {names[0]}")])
    cert = (_builder(name, name, key.public_key(), CA_DAYS)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(_name_constraints(names), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    _store_ca_key(state, key, cert)
    state.write("ca.crt", cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def _san(names):
    entries = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return entries


def _current(cert, ca_cert, names):
    """Is the stored server certificate still the right one?"""
    if cert is None or cert.issuer != ca_cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return set(san) == set(_san(names)) and cert.not_valid_after_utc - _now() > RENEW_BEFORE


def ensure(state, names, say=print):
    """Make sure the CA and a server certificate for `names` exist; returns the server cert. A CA that
    must be replaced (see the module's docstring) is, and `say` tells the user to import it again."""
    ca_key, ca_cert = _ensure_ca(state, names, say)
    key = _load_key(state, "server.key")
    new_key = key is None
    if new_key:
        key = _new_key(state, "server.key")
    cert = _load_cert(state, "server.crt")
    if not new_key and cert is not None and cert.public_key() == key.public_key() \
            and _current(cert, ca_cert, names):
        return cert
    # A common name that looks like a DNS name is checked as one when there is no DNS name in the SAN
    # (OpenSSL): an IP address goes in a sentence.
    common_name = names[0] if isinstance(_san(names[:1])[0], x509.DNSName) else f"Jupyter appliance {names[0]}"
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (_builder(subject, ca_cert.subject, key.public_key(), SERVER_DAYS)
            .add_extension(x509.SubjectAlternativeName(_san(names)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    state.write("server.crt", cert.public_bytes(serialization.Encoding.PEM))
    return cert


def fingerprint(cert):
    """SHA-256 fingerprint as browsers show it (AA:BB:...)."""
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))
