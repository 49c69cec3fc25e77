"""`--tls acme` on the operator's side: the checks made before anything changes, and what `up` and `status`
say about the certificate.

The certificate itself is requested and renewed on the server, by certbot through appliance/server/acme.py
(installed there at layout.ACME_SCRIPT; it records every attempt in layout.ACME_STATUS).
"""
import datetime
import ipaddress
import json
import os
import socket
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from . import layout, ssh, tls
from .config import LETSENCRYPT, LETSENCRYPT_STAGING
from .errors import DeployError

EXPIRY_WARNING_DAYS = 14   # status is unhealthy when the served certificate has less left
RATE_LIMITS = "https://letsencrypt.org/docs/rate-limits/"
HOSTS_ENV = "APPLIANCE_TEST_HOSTS"  # test-only: a hosts file answers the DNS check (no query leaves the machine)


def system_resolver():
    """getaddrinfo, or (tests) a lookup in the hosts-format file $APPLIANCE_TEST_HOSTS."""
    path = os.environ.get(HOSTS_ENV)
    if not path:
        return socket.getaddrinfo
    table = {}
    for line in Path(path).read_text().splitlines():
        address, *names = line.split("#")[0].split() or [None]
        for name in names:
            table.setdefault(name, []).append(address)

    def resolve(name, *args):
        if name not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0))
                for a in table[name]]
    return resolve


def _addresses(name, resolve):
    """The addresses name resolves to (normalised), or an empty set when it does not resolve."""
    try:
        infos = resolve(name, None, 0, socket.SOCK_STREAM)
    except (OSError, UnicodeError):  # socket.gaierror is an OSError
        return set()
    found = set()
    for info in infos:
        try:
            found.add(str(ipaddress.ip_address(str(info[4][0]).split("%")[0])))
        except (ValueError, IndexError, TypeError):
            continue
    return found


def server_addresses(cfg, resolve=socket.getaddrinfo):
    """The addresses the server answers on, as far as this machine can tell (the local droplet: loopback)."""
    if cfg.is_local:
        return {"127.0.0.1", "::1"}
    try:
        return {str(ipaddress.ip_address(cfg.host))}
    except ValueError:
        return _addresses(cfg.host, resolve)


def check_dns(cfg, resolve=None, say=print):
    """Before anything changes: the domain must resolve to the server, or the CA's HTTP-01 check goes
    elsewhere. A name that does not resolve at all only warns (DNS may still be propagating)."""
    resolve = resolve or system_resolver()
    found = _addresses(cfg.domain, resolve)
    if not found:
        say(f"warning: {cfg.domain} does not resolve from this machine (yet?); continuing, as DNS may still be "
            "propagating: the CA must find the server's address under that name, or the request fails")
        return
    server = server_addresses(cfg, resolve)
    if not server:
        return  # the server's own name does not resolve here: SSH will say so
    if not found & server:
        raise DeployError(f"{cfg.domain} resolves to {', '.join(sorted(found))}, not to the server "
                          f"({', '.join(sorted(server))}): point its DNS records (A/AAAA) at the server, wait until "
                          "they are visible, and run up again")
    if found - server:
        say(f"warning: {cfg.domain} also resolves to {', '.join(sorted(found - server))}; the CA may check "
            "there (Let's Encrypt tries IPv6 first)")


def check_directory(target, url, bundle=None):
    """Before anything changes: the ACME directory answers, from the server (the one that will talk to it),
    trusting the CA bundle when one is given."""
    r = ssh.remote(target, "acme-directory", url, input=bundle or b"", capture_output=True)
    if r.returncode != 0:
        raise DeployError(f"checking the ACME directory {url} from {target.host} failed: "
                          f"{ssh.last_line(r.stderr.decode(errors='replace'))}")
    result = json.loads(r.stdout)
    if not result["ok"]:
        raise DeployError(f"the ACME directory {url} {result['message']} (asked from the server {target.host}); "
                          "give the right one with --acme-directory, or leave it out for Let's Encrypt")


def ca_name(directory):
    if directory == LETSENCRYPT:
        return "Let's Encrypt"
    if directory == LETSENCRYPT_STAGING:
        return "Let's Encrypt's staging CA"
    return f"the ACME CA at {directory}"


def certificate(pem):
    """What status and up say about the served certificate (None without one)."""
    if not pem:
        return None
    cert = x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)
    expires = cert.not_valid_after_utc
    issuer = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return {"expires": expires.isoformat(), "sha256": tls.fingerprint(cert),
            "days_left": (expires - datetime.datetime.now(datetime.timezone.utc)).days,
            "issuer": issuer[0].value if issuer else cert.issuer.rfc4514_string(),
            "serial": f"{cert.serial_number:x}"}


def problems(cert, acme):
    """Why the certificate makes the appliance unhealthy: it expires in under EXPIRY_WARNING_DAYS days, the
    last attempt (a request or a renewal) or the last renewal failed, or (with ACME) its renewal timer does
    not run."""
    found = []
    fix = ("renewal has not succeeded: see the last attempt" if acme else "run up to renew it")
    if cert is not None and cert["days_left"] < 0:
        found.append(f"the TLS certificate has expired: {fix}")
    elif cert is not None and cert["days_left"] < EXPIRY_WARNING_DAYS:
        found.append(f"the TLS certificate expires in {cert['days_left']} days: {fix}")
    if acme:
        last, renewal = acme.get("last"), acme.get("last_renewal")
        for attempt in (last, renewal if renewal != last else None):  # a later request does not renew
            if attempt and not attempt.get("ok"):
                found.append(f"the last certificate {attempt['action']} failed ({attempt['time']}): "
                             f"{attempt['message']}; retry with up, or on the server: sudo systemctl start "
                             f"{layout.ACME_SERVICE}.service")
        if acme.get("timer") != "active":
            found.append(f"the renewal timer {layout.ACME_SERVICE}.timer is {acme.get('timer')}")
    return found


def report(acme):
    """status's lines about the ACME certificate's renewal."""
    if not acme:
        return []
    lines = [f"  renewal:     {ca_name(acme['directory'])} for {acme['domain']}, "
             f"{layout.ACME_SERVICE}.timer {acme['timer']}"]
    last, renewal = acme.get("last"), acme.get("last_renewal")
    for what, attempt in (("last attempt", last), ("last renewal", renewal if renewal != last else None)):
        if attempt:
            lines.append(f"  {what + ':':<13} {attempt['time']} {attempt['action']} {attempt['result']}"
                         f"{'' if attempt['ok'] else ' (FAILED)'}: {attempt['message']}")
    return lines


def failure(cfg, last):
    """The one line `up` ends with when the certificate could not be had."""
    hint = ""
    if last.get("rate_limited"):
        hint = (f"; the CA's rate limits ({RATE_LIMITS}) say when to retry; try --acme-directory "
                f"{LETSENCRYPT_STAGING} meanwhile")
    return (f"no certificate from {ca_name(cfg.acme_directory_url)} for {cfg.domain}: {last['message']}; "
            f"the site keeps serving {last.get('serving', 'its previous certificate')}; fix that and run the same "
            f"up again{hint}")
