"""The appliance's certificate from an ACME CA (Let's Encrypt), on the server: request, renew, install, remove.

Installed at layout.ACME_SCRIPT by `up --tls acme` (standard library, plus Debian's python3-cryptography,
which certbot depends on). Every setting comes from one JSON file, layout.ACME_CONFIG, rendered by
provision.py (templates/acme.json.j2):

  obtain CONFIG          `up`: unless a valid certificate for the domain from the configured CA is there,
                         ask for one (certbot certonly --webroot --keep-until-expiring); install it where nginx
                         reads it. When the request fails the site keeps a certificate: the previous one,
                         else the private CA's. Prints {"changed", "ok", "result", "message", ...} as JSON.
  renew CONFIG [--force] the timer's service: certbot renew; exit 1 when the appliance's certificate failed.
  deploy CONFIG          certbot's deploy hook: install the renewed certificate and reload nginx.
  remove CONFIG          back to the private CA: delete the appliance's certificates and renewal configs,
                         its timer and files (Debian's certbot.timer comes back only for other certificates).

Each request and renewal is recorded in the status file (time, action, result, message; newest last).
nginx is only ever reloaded (`systemctl try-reload-or-restart`: a reload when it runs, nothing otherwise),
never restarted, and only after `nginx -t` accepted the new files.
"""
import contextlib
import datetime
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys

HISTORY = 20                                  # attempts kept in the status file
RENEW_BEFORE = datetime.timedelta(days=30)    # certbot's own default (renew_before_expiry)
CERTBOT_TIMEOUT = 900                         # seconds: a request or renewal that hangs is a failure
TEST_NGINX_CONF = "APPLIANCE_TEST_NGINX_CONF"  # test-only: an nginx run by the tests with its own configuration
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_NOISE = ("Saving debug log", "Ask for help or search", "- - - -", "Requesting a certificate", "Account registered",
          "Processing ", "Hint:", "Renewing an existing certificate", "Some challenges have failed.",
          "Certbot failed to authenticate some domains", "IMPORTANT NOTES", "Simulating renewal")


class Failure(Exception):
    """A step that could not be done; its message is one line."""


def run(argv, env=None, timeout=None):
    """(exit code, stdout and stderr together) of a command; the tests replace this."""
    try:
        r = subprocess.run(argv, env=env, timeout=timeout, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, errors="replace")
    except FileNotFoundError:
        return 127, f"{argv[0]} is not installed"
    except subprocess.TimeoutExpired:
        return 124, f"{argv[0]} {argv[1]} did not finish within {timeout} s"
    return r.returncode, r.stdout


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def one_line(text, limit=400):
    """Printable characters only (text from a CA reaches the operator's terminal), on one line."""
    text = _ANSI.sub("", text)
    text = "".join(c if c.isprintable() else " " for c in text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def certbot_reason(output):
    """certbot's reason for a failure, in one line: the CA's problems with the challenge (Domain/Type/Detail),
    else the ACME error after "An unexpected error occurred:", else a renewal's error, else its last words."""
    lines = [_ANSI.sub("", line).strip() for line in output.splitlines()]
    problems, domain, kind = [], "", ""
    for line in lines:
        if line.startswith("Domain:"):
            domain, kind = line[7:].strip(), ""
        elif line.startswith("Type:"):
            kind = line[5:].strip()
        elif line.startswith("Detail:"):
            problems.append(f"{domain}: {line[7:].strip()}" + (f" ({kind})" if kind else ""))
    if problems:
        return one_line("; ".join(dict.fromkeys(problems)))
    meaningful = [line for line in lines if line and not line.startswith(_NOISE)]
    for i, line in enumerate(meaningful):
        if line == "An unexpected error occurred:" and i + 1 < len(meaningful):
            status = re.fullmatch(r"acme\.errors\.ClientError: <Response \[(\d+)\]>", meaningful[i + 1])
            if status:  # the directory (or another ACME URL) answered with an HTTP error and nothing more
                return f"the ACME server answered HTTP {status[1]}"
            return one_line(meaningful[i + 1])
    for line in meaningful:
        found = re.search(r"Failed to renew certificate \S+ with error: (.+)", line)
        if found:
            return one_line(found[1])
    return one_line(meaningful[-1]) if meaningful else "certbot said nothing"


def rate_limited(reason):
    return bool(re.search(r"rate.?limit|too many", reason, re.I))


# certificates -------------------------------------------------------------------------------------------

def read_cert(path):
    """{names, not_after, serial, issuer, pem} of the first certificate in a PEM file, or None."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    try:
        with open(path, "rb") as f:
            pem = f.read()
        cert = x509.load_pem_x509_certificate(pem)
    except (OSError, ValueError):
        return None
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = sorted(names.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = []
    not_after = getattr(cert, "not_valid_after_utc", None)  # cryptography 42 and later; Debian 12 has 38
    if not_after is None:
        not_after = cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)
    cn = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    org = cert.issuer.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    issuer = (cn or org)[0].value if cn or org else cert.issuer.rfc4514_string()
    return {"names": names, "not_after": not_after, "serial": f"{cert.serial_number:x}", "issuer": issuer,
            "pem": pem}


def valid(cert):
    return cert is not None and cert["not_after"] > now()


def describe(cert):
    if cert is None:
        return "no certificate"
    return f"the certificate for {', '.join(cert['names']) or '(no DNS name)'} from {cert['issuer']} " \
           f"(valid until {cert['not_after']:%Y-%m-%d})"


def lineages(cfg):
    """certbot's certificates on this server (renewal/*.conf): name, server, whether the appliance made it
    (its webroot or deploy hook), fullchain and privkey paths."""
    found = []
    directory = os.path.join(cfg["certbot_dir"], "renewal")
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        names = []
    for filename in names:
        if not filename.endswith(".conf"):
            continue
        values = {}
        try:
            with open(os.path.join(directory, filename)) as f:
                for line in f:
                    key, eq, value = line.partition("=")
                    if eq and not key.lstrip().startswith("#"):
                        values.setdefault(key.strip(), value.strip())
        except OSError:
            continue
        name = filename[:-len(".conf")]
        live = os.path.join(cfg["certbot_dir"], "live", name)
        found.append({"name": name, "server": values.get("server"),
                      "ours": cfg["script"] in values.get("renew_hook", "")
                      or cfg["webroot"] in values.get("webroot_path", ""),
                      "fullchain": values.get("fullchain", os.path.join(live, "fullchain.pem")),
                      "privkey": values.get("privkey", os.path.join(live, "privkey.pem"))})
    return found


# files and nginx ----------------------------------------------------------------------------------------

def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def write_file(path, data, mode):
    """Replace path atomically with data (owner: whoever runs this, root on the server)."""
    tmp = f"{path}.new-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), mode)
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def _put(path, data, mode):
    if data is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    else:
        write_file(path, data, mode)


def install(cfg, cert_path, key_path):
    """Copy a certificate (full chain) and its key to where nginx reads them (key 0600), check nginx's
    configuration with them, reload nginx; the previous files come back when nginx refuses. Returns whether
    anything changed."""
    new_cert, new_key = _read(cert_path), _read(key_path)
    if not new_cert or not new_key:
        raise Failure(f"{cert_path} or {key_path} is missing")
    old_cert, old_key = _read(cfg["cert"]), _read(cfg["key"])
    if (new_cert, new_key) == (old_cert, old_key):
        return False
    write_file(cfg["key"], new_key, 0o600)
    write_file(cfg["cert"], new_cert, 0o644)
    conf = os.environ.get(TEST_NGINX_CONF)
    code, out = run(["nginx", "-t", "-c", conf] if conf else ["nginx", "-t"])
    if code != 0:
        _put(cfg["key"], old_key, 0o600)
        _put(cfg["cert"], old_cert, 0o644)
        raise Failure(f"nginx refused the certificate of {cert_path}, the previous one stays: "
                      f"{one_line(out.strip().splitlines()[-1] if out.strip() else out)}")
    code, out = run(["nginx", "-c", conf, "-s", "reload"] if conf else
                    ["systemctl", "try-reload-or-restart", cfg["nginx"]])
    if code != 0:
        raise Failure(f"reloading {cfg['nginx']} failed: {one_line(out)}")
    return True


def _wanted(cfg):
    """The appliance's certificate nginx should serve: the domain's when it is valid, else the one of the
    appliance's that is being served (a previous domain's, kept after a failed request); None: neither."""
    ours = [lineage for lineage in lineages(cfg) if lineage["ours"]]
    for lineage in ours:
        if lineage["name"] == cfg["domain"] and valid(read_cert(lineage["fullchain"])):
            return lineage
    served = read_cert(cfg["cert"])
    for lineage in ours:
        cert = read_cert(lineage["fullchain"])
        if served and valid(cert) and cert["names"] == served["names"]:  # (the CA may sign with another
            return lineage                                                  # intermediate each time)
    return None


def sync(cfg):
    """Serve the newest version of the appliance's certificate (see _wanted); returns whether it changed."""
    lineage = _wanted(cfg)
    return bool(lineage) and install(cfg, lineage["fullchain"], lineage["privkey"])


def keep_serving(cfg):
    """After a failed request: keep the served certificate when it is still valid and either names the
    domain or is one of the appliance's ACME certificates (the previous one); else serve the private CA's.
    Returns whether anything changed."""
    served = read_cert(cfg["cert"])
    if valid(served) and _read(cfg["key"]):
        if cfg["domain"] in served["names"]:
            return False
        if any(_read(lineage["fullchain"]) == served["pem"] for lineage in lineages(cfg) if lineage["ours"]):
            return False
    return install(cfg, cfg["fallback_cert"], cfg["fallback_key"])


# the status file ----------------------------------------------------------------------------------------

def record(cfg, action, result, ok, message, **extra):
    """Append one attempt to the status file (newest last, at most HISTORY); returns it."""
    entry = {"time": now().strftime("%Y-%m-%dT%H:%M:%SZ"), "action": action, "domain": cfg["domain"],
             "result": result, "ok": ok, "message": one_line(message), **extra}
    try:
        with open(cfg["status"]) as f:
            attempts = json.load(f)["attempts"][-(HISTORY - 1):]
    except (OSError, ValueError, KeyError, TypeError):
        attempts = []
    write_file(cfg["status"], json.dumps({"attempts": attempts + [entry]}, indent=1).encode(), 0o644)
    return entry


@contextlib.contextmanager
def locked(cfg):
    """One request, renewal or removal at a time (certbot's deploy hook runs inside them and takes no lock)."""
    directory = os.path.dirname(cfg["status"])
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# commands -----------------------------------------------------------------------------------------------

def certbot_env(cfg):
    env = dict(os.environ)
    if cfg.get("ca_bundle"):  # trusted for the ACME API (certbot talks to nothing else)
        env["REQUESTS_CA_BUNDLE"] = cfg["ca_bundle"]
    return env


def deploy_hook(cfg, config_path):
    return f"/usr/bin/python3 {cfg['script']} deploy {config_path}"


def certbot(cfg, command, *args):
    """certbot's command line; the settings may add options (the tests' own directories), Debian's defaults
    otherwise: /etc/letsencrypt, /var/lib/letsencrypt, /var/log/letsencrypt."""
    return ["certbot", command, *cfg.get("certbot_args", []), *args]


def certonly_argv(cfg, config_path):
    contact = ["--email", cfg["email"]] if cfg.get("email") else ["--register-unsafely-without-email"]
    return [*certbot(cfg, "certonly"), "--non-interactive", "--agree-tos", "--no-eff-email", *contact,
            "--server", cfg["directory"], "--webroot", "--webroot-path", cfg["webroot"],
            "--cert-name", cfg["domain"], "--domains", cfg["domain"], "--keep-until-expiring",
            "--key-type", "ecdsa", "--elliptic-curve", "secp256r1", "--deploy-hook", deploy_hook(cfg, config_path)]


def delete(cfg, name):
    code, out = run(certbot(cfg, "delete", "--non-interactive", "--cert-name", name))
    if code != 0:
        raise Failure(f"certbot could not delete the certificate {name}: {certbot_reason(out)}")


def obtain(cfg, config_path):
    """`up`: make sure the domain has a valid certificate from the configured CA and nginx serves it."""
    domain = cfg["domain"]
    with locked(cfg):
        changed, before = False, (_read(cfg["cert"]), _read(cfg["key"]))  # certbot's hook may install it
        if read_cert(cfg["cert"]) is None or _read(cfg["key"]) is None:  # nginx needs one to start at all
            changed = install(cfg, cfg["fallback_cert"], cfg["fallback_key"])
        current = next((lin for lin in lineages(cfg) if lin["name"] == domain), None)
        if current and current["ours"] and current["server"] != cfg["directory"]:
            delete(cfg, domain)  # another CA's (say staging's): ask the configured one
            current = None
        cert = read_cert(current["fullchain"]) if current else None
        if cert and cert["names"] == [domain] and cert["not_after"] - now() > RENEW_BEFORE:
            result, ok, message = "kept", True, f"kept {describe(cert)}: nothing requested"
        else:
            code, out = run(certonly_argv(cfg, config_path), env=certbot_env(cfg), timeout=CERTBOT_TIMEOUT)
            ok = code == 0
            cert = read_cert(os.path.join(cfg["certbot_dir"], "live", domain, "fullchain.pem")) if ok else None
            if ok and cert:
                result = "issued" if "Successfully received certificate" in out else "kept"
                message = f"{'received' if result == 'issued' else 'kept'} {describe(cert)}"
            else:
                ok, result, message = False, "failed", certbot_reason(out) if code else "certbot made no certificate"
        try:
            if ok:
                changed |= sync(cfg)
                for lineage in lineages(cfg):  # an earlier domain's: stale now
                    if lineage["ours"] and lineage["name"] != domain:
                        delete(cfg, lineage["name"])
                        changed = True
            else:
                changed |= keep_serving(cfg)
        except Failure as exc:
            ok, result, message = False, "failed", str(exc)
        changed |= (_read(cfg["cert"]), _read(cfg["key"])) != before
        served = read_cert(cfg["cert"])
        entry = record(cfg, "request", result, ok, message, serving=describe(served),
                       serial=served["serial"] if served else None, rate_limited=not ok and rate_limited(message))
    print(json.dumps({"changed": changed, **entry}))


def renew(cfg, force=False):
    """The timer's service: renew what is due (with --force: the domain's now); returns the exit code."""
    domain = cfg["domain"]
    with locked(cfg):
        argv = certbot(cfg, "renew", "--non-interactive", "--no-random-sleep-on-renew")
        if force:
            argv += ["--cert-name", domain, "--force-renewal"]
        code, out = run(argv, env=certbot_env(cfg), timeout=CERTBOT_TIMEOUT)
        lineage = next((lin for lin in lineages(cfg) if lin["name"] == domain), None)
        path = lineage["fullchain"] if lineage else None
        if lineage is None:
            ok, result = False, "failed"
            message = f"there is no certificate for {domain} on this server yet: run up again"
        elif f"{path} (failure)" in out or (code != 0 and f"{path} (success)" not in out
                                             and f"{path} (skipped)" not in out):
            ok, result, message = False, "failed", certbot_reason(out)
        else:
            ok, result = True, "renewed" if f"{path} (success)" in out else "not due"
            message = describe(read_cert(path))
            if code != 0:
                message += f"; another certificate on this server failed: {certbot_reason(out)}"
        try:
            sync(cfg)
        except Failure as exc:
            ok, result, message = False, "failed", str(exc)
        served = read_cert(cfg["cert"])
        entry = record(cfg, "renewal", result, ok, message, serving=describe(served),
                       serial=served["serial"] if served else None, rate_limited=not ok and rate_limited(message))
    print(f"{entry['result']}: {entry['message']}")
    return 0 if ok else 1


def deploy(cfg):
    """certbot's deploy hook (RENEWED_LINEAGE in its environment): serve the renewed certificate."""
    try:
        changed = sync(cfg)
    except Failure as exc:
        print(f"not installed: {exc}", file=sys.stderr)
        return 1
    print(f"{'installed and nginx reloaded' if changed else 'nothing to install'} "
          f"({os.environ.get('RENEWED_LINEAGE', 'no lineage given')})")
    return 0


def remove(cfg):
    """Back to the private CA: delete the appliance's certificates, renewal configs, timer and files."""
    with locked(cfg):
        deleted = []
        for lineage in lineages(cfg):
            if lineage["ours"]:
                delete(cfg, lineage["name"])
                deleted.append(lineage["name"])
        run(["systemctl", "disable", "--now", f"{cfg['service']}.timer"])
        run(["systemctl", "unmask", cfg["debian_timer"]])
        if lineages(cfg):  # certificates that are not the appliance's: Debian's timer renews them again
            run(["systemctl", "enable", "--now", cfg["debian_timer"]])
        for path in cfg["remove"]:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        run(["systemctl", "daemon-reload"])
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(cfg["status"]))  # when nothing else is kept there
    print(json.dumps({"changed": True, "deleted": deleted}))


def main(argv):
    command, config_path, flags = argv[0], argv[1], argv[2:]
    if "/usr/sbin" not in os.environ.get("PATH", "").split(":"):  # nginx, as a hook of a hook may be run
        os.environ["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    with open(config_path) as f:
        cfg = json.load(f)
    try:
        if command == "obtain":
            return obtain(cfg, config_path) or 0
        if command == "renew":
            return renew(cfg, force="--force" in flags)
        if command == "deploy":
            return deploy(cfg)
        if command == "remove":
            return remove(cfg) or 0
    except Failure as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"unknown command {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
