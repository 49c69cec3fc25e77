"""A private CA and the server certificate it signs (ECDSA P-256).

Both live in the target's state directory and are reused on every run; the
server certificate is re-issued only when the names it must carry change or
it has less than 30 days left.
"""
import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import StateError

CA_DAYS = 3650
SERVER_DAYS = 365
RENEW_BEFORE = datetime.timedelta(days=30)


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _load_key(state, name):
    data = state.read(name)
    if data is None:
        key = ec.generate_private_key(ec.SECP256R1())
        state.write(name, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()), secret=True)
        return key, True
    try:
        return serialization.load_pem_private_key(data, password=None), False
    except (ValueError, TypeError):
        raise StateError(f"{state.file(name)} is not a PEM private key; move it away to start over") from None


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


def _ensure_ca(state, host):
    key, new_key = _load_key(state, "ca.key")
    cert = _load_cert(state, "ca.crt")
    if cert is not None and not new_key and cert.public_key() == key.public_key() \
            and cert.not_valid_after_utc - _now() > RENEW_BEFORE:
        return key, cert
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Jupyter appliance"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"Jupyter appliance CA for {host}")])
    cert = (_builder(name, name, key.public_key(), CA_DAYS)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
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
    except (ValueError, TypeError, x509.InvalidSignature, x509.ExtensionNotFound):
        return False
    return set(san) == set(_san(names)) and cert.not_valid_after_utc - _now() > RENEW_BEFORE


def ensure(state, names):
    """Make sure the CA and a server certificate for `names` exist; returns the server cert."""
    ca_key, ca_cert = _ensure_ca(state, names[0])
    key, new_key = _load_key(state, "server.key")
    cert = _load_cert(state, "server.crt")
    if not new_key and cert is not None and cert.public_key() == key.public_key() \
            and _current(cert, ca_cert, names):
        return cert
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
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
