"""The Dask cluster (docs/cluster.md): the scheduler on the appliance's server, one worker on each worker server,
every component from the notebook image, mutual TLS between all of them.

Runs on the operator's machine: it keeps the cluster's own CA and one certificate per component (the scheduler,
each worker, the notebook's client) in the state directory, says what each server's `dask` role gets, puts the
workers through the same path as the appliance's server (server.yml, the image, worker.yml) and retires the
workers no longer wanted, their data moved to the others first.

Why a CA of its own: the appliance's CA is for browsers (TLS server only, name-constrained to the appliance's
names); the cluster's certificates are for servers and clients at the workers' addresses, and a stolen worker
key must never be able to pass for the appliance's website.
"""
import datetime
import contextlib
import json
import os
import shlex
import socket
import subprocess
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from . import layout
from .errors import DeployError

CA = "dask-ca"
DAYS, RENEW_DAYS = 825, 30
IMAGE_TLS = layout.DASK_IMAGE_TLS_DIR
SCHEDULER_HTTP_ROUTES = [  # Dask's defaults without the proxy to other hosts, with the API `up` retires through
    "distributed.http.scheduler.prometheus", "distributed.http.scheduler.info", "distributed.http.scheduler.json",
    "distributed.http.health", "distributed.http.statics", "distributed.http.scheduler.api"]


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Jupyter appliance Dask cluster"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _ca(state):
    cert, key = state.read(f"{CA}.crt"), state.read(f"{CA}.key")
    if cert and key:
        cert = x509.load_pem_x509_certificate(cert)
        if cert.not_valid_after_utc - _now() > datetime.timedelta(days=RENEW_DAYS):
            return cert, serialization.load_pem_private_key(key, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("cluster CA")).issuer_name(_name("cluster CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    state.write(f"{CA}.key", _pem_key(key), secret=True)
    state.write(f"{CA}.crt", cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def certificate(state, component):
    """(CA PEM, certificate PEM, key PEM) of one component, issued by the cluster's CA; reused while it has
    more than RENEW_DAYS left and was issued by the current CA."""
    ca_cert, ca_key = _ca(state)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    cert, key = state.read(f"dask-{component}.crt"), state.read(f"dask-{component}.key")
    if cert and key:
        loaded = x509.load_pem_x509_certificate(cert)
        if loaded.issuer == ca_cert.subject and loaded.not_valid_after_utc - _now() > datetime.timedelta(
                days=RENEW_DAYS):
            try:
                ca_cert.public_key().verify(loaded.signature, loaded.tbs_certificate_bytes,
                                            ec.ECDSA(loaded.signature_hash_algorithm))
                return ca_pem.decode(), cert.decode(), key.decode()
            except Exception:
                pass
    new_key = ec.generate_private_key(ec.SECP256R1())
    issued = (x509.CertificateBuilder().subject_name(_name(component)).issuer_name(ca_cert.subject)
              .public_key(new_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(_now() - datetime.timedelta(minutes=5))
              .not_valid_after(_now() + datetime.timedelta(days=DAYS))
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                    ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    cert, key = issued.public_bytes(serialization.Encoding.PEM), _pem_key(new_key)
    state.write(f"dask-{component}.key", key, secret=True)
    state.write(f"dask-{component}.crt", cert)
    return ca_pem.decode(), cert.decode(), key.decode()


def _files(state, component, directory, role):
    """The managed files (ansible/tasks/managed-files.yml) of one component's certificate in directory."""
    ca, cert, key = certificate(state, component)
    return [{"path": f"{directory}/ca.crt", "mode": layout.FILE_MODE, "group": "root", "service": "dask",
             "content": ca},
            {"path": f"{directory}/{role}.crt", "mode": layout.FILE_MODE, "group": "root", "service": "dask",
             "content": cert},
            {"path": f"{directory}/{role}.key", "mode": layout.SECRET_MODE, "group": layout.NOTEBOOK_ACCOUNT,
             "service": "dask", "content": key, "secret": True}]


def _tls_env(role, directory=IMAGE_TLS):
    return {"DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
            "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": f"{directory}/ca.crt",
            f"DASK_DISTRIBUTED__COMM__TLS__{role.upper()}__CERT": f"{directory}/{role}.crt",
            f"DASK_DISTRIBUTED__COMM__TLS__{role.upper()}__KEY": f"{directory}/{role}.key"}


def scheduler_address(address):
    host = f"[{address}]" if ":" in address else address
    return f"tls://{host}:{layout.DASK_SCHEDULER_PORT}"


def ip_of(host):
    """The IP address a firewall rule can name (a --worker-host may be a DNS name)."""
    try:
        return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0]
    except OSError:
        raise DeployError(f"cannot resolve the worker server {host!r}") from None


def appliance_vars(state, workers, appliance_address):
    """Extra vars of site.yml: the scheduler (when there are workers) and the notebook's client."""
    if not workers:
        return {"dask_mode": "none", "dask_files": [], "dask_ports": [], "dask_peers": [], "dask_env": {},
                "dask_command": [], "dask_healthcheck": ["NONE"], "jupyter_dask_env": {}, "jupyter_dask_mounts": []}
    files = _files(state, "scheduler", layout.DASK_TLS_DIR, "scheduler") + _files(
        state, "client", layout.DASK_CLIENT_DIR, "client")
    return {
        "dask_mode": "scheduler", "dask_files": files, "dask_ports": [layout.DASK_SCHEDULER_PORT],
        "dask_peers": sorted(ip_of(w["address"]) for w in workers),
        "dask_env": {**_tls_env("scheduler"), "DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES": repr(SCHEDULER_HTTP_ROUTES)},
        "dask_command": ["dask", "scheduler", "--protocol", "tls", "--port", str(layout.DASK_SCHEDULER_PORT),
                         "--dashboard-address", f"127.0.0.1:{layout.DASK_DASHBOARD_PORT}", "--dashboard-prefix", "/dask"],
        # (not the image's health check, which asks Jupyter): the dashboard's health page
        "dask_healthcheck": ["CMD", "python", "-s", "-c", "import urllib.request; urllib.request.urlopen("
                             f"'http://127.0.0.1:{layout.DASK_DASHBOARD_PORT}/dask/health', timeout=5)"],
        "jupyter_dask_env": {**_tls_env("client"), "DASK_SCHEDULER_ADDRESS": scheduler_address(appliance_address)},
        "jupyter_dask_mounts": [{"type": "bind", "source": layout.DASK_CLIENT_DIR, "target": IMAGE_TLS,
                                 "read_only": True}],
    }


def worker_vars(state, worker, workers, appliance_address, memory):
    """Extra vars of worker.yml for one worker."""
    contact = worker["address"]
    host = f"[{contact}]" if ":" in contact else contact
    return {
        "dask_mode": "worker", "dask_files": _files(state, f"worker-{worker['name']}", layout.DASK_TLS_DIR, "worker"),
        "dask_ports": [layout.DASK_WORKER_PORT, layout.DASK_NANNY_PORT],
        "dask_peers": sorted({ip_of(appliance_address)} | {ip_of(w["address"]) for w in workers if w is not worker}),
        "dask_env": _tls_env("worker"),
        "dask_healthcheck": ["NONE"],  # no HTTP server of its own (--no-dashboard); its nanny restarts it
        "dask_command": ["dask", "worker", scheduler_address(appliance_address), "--name", worker["name"],
                         "--memory-limit", "auto" if memory == "0" else memory,
                         "--listen-address", f"tls://0.0.0.0:{layout.DASK_WORKER_PORT}",
                         "--contact-address", f"tls://{host}:{layout.DASK_WORKER_PORT}",
                         "--nanny-port", str(layout.DASK_NANNY_PORT), "--local-directory", layout.DASK_SPILL_DIR,
                         "--no-dashboard"],
    }


RETIRE = """
import json, sys, urllib.request
names = json.load(sys.stdin)
base = "http://127.0.0.1:%d/dask/api/v1/" % int(sys.argv[1])
try:
    found = json.load(urllib.request.urlopen(base + "get_workers", timeout=10))["workers"]
except OSError:
    sys.exit(0)  # no scheduler answers: nothing to retire
gone = [w["address"] for w in found if w["name"] in names]
if gone:
    request = urllib.request.Request(base + "retire_workers", data=json.dumps({"workers": gone}).encode(),
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=600).read()
print(json.dumps(gone))
"""


IDENTITY = """
import json, sys, urllib.request
try:
    found = json.load(urllib.request.urlopen("http://127.0.0.1:%d/dask/json/identity.json" % int(sys.argv[1]),
                                             timeout=10))
except OSError as exc:
    print(json.dumps({"error": str(exc)}))
else:
    print(json.dumps([{"name": str(w.get("name")), "address": address, "status": w.get("status"),
                       "memory": (w.get("metrics") or {}).get("memory"), "memory_limit": w.get("memory_limit"),
                       "threads": w.get("nthreads"), "tasks": (w.get("metrics") or {}).get("task_counts", {})}
                      for address, w in found.get("workers", {}).items()]))
"""


def workers_status(target, expected):
    """The scheduler's view of the workers (as status shows them), and the problems it shows."""
    r = target.ssh(target.sudo(f"python3 -c {shlex.quote(IDENTITY)} {layout.DASK_DASHBOARD_PORT}"),
                   capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    try:
        found = json.loads(r.stdout)
    except ValueError:
        found = {"error": r.stderr.strip()[-200:] or "no answer"}
    if isinstance(found, dict):
        return [], [f"the Dask scheduler does not answer: {found['error']}"]
    names = {w["name"] for w in found}
    problems = [f"Dask worker {name} is not connected" for name in expected if name not in names]
    problems += [f"Dask worker {w['name']} is {w['status']}" for w in found if w["status"] != "running"]
    return found, problems


def retire(target, names, say):
    """Ask the scheduler to retire the named workers: their data goes to the others first."""
    if not names:
        return
    say(f"Retiring the Dask worker(s) {', '.join(names)} (their data moves to the others first)")
    r = target.ssh(target.sudo(f"python3 -c {shlex.quote(RETIRE)} {layout.DASK_DASHBOARD_PORT}"),
                   input=json.dumps(list(names)), capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        from .ssh import last_line
        raise DeployError(f"retiring the worker(s) {', '.join(names)} failed: {last_line(r.stderr)}")


def wanted(cfg, state, say):
    """The worker servers cfg asks for (local ones created or started): [{"name", "host", "port", "address"}]."""
    names = cfg.worker_list([w["name"] for w in state.workers()])
    workers = []
    for name in names:
        if cfg.is_local:
            from . import droplet
            index = int(name.rsplit("-", 1)[1])
            reach = droplet.ensure(cfg, say=say, index=index)
            workers.append({"name": name, "host": reach["host"], "port": reach["port"], "address": reach["address"],
                            "created": reach["created"]})
        else:
            workers.append({"name": name, "host": name, "port": cfg.ssh_port, "address": name, "created": False})
    return workers


def appliance_address(cfg):
    """The appliance's server as the workers reach it."""
    if cfg.is_local:
        from . import droplet
        return droplet.address()
    return cfg.host


@contextlib.contextmanager
def worker_target(cfg, state, worker):
    """A reachable Target for a worker server, and its own State (known_hosts, login)."""
    from .ssh import Target, check_reachable, public_key
    from .state import State
    wstate = State(state.path / f"worker-{worker['name']}").ensure()
    if worker["created"]:  # a new local worker droplet: new host keys, root again
        wstate.known_hosts.unlink(missing_ok=True)
        wstate.set_login(None)
    if cfg.is_local:
        from . import droplet
        key, user = str(state.file(droplet.KEY)), "root"
    else:
        key, user = cfg.ssh_key, cfg.ssh_user
    key, pubkey = public_key(key)
    with tempfile.TemporaryDirectory(prefix="appliance-") as work:
        os.chmod(work, 0o700)
        target = Target(worker["host"], worker["port"], wstate.login() or user, key, str(wstate.known_hosts), work)
        check_reachable(target)
        try:
            yield target, wstate, pubkey
        finally:
            target.close()


def provision_worker(cfg, state, worker, workers, tag, base_vars, say):
    """One worker server through the appliance's path: server.yml, the operator's login, the image, worker.yml.
    Returns the number of changes."""
    from .playbook import run_playbook
    from .ship import ship_image
    from .ssh import operator_login
    say(f"Dask worker {worker['name']} ({worker['host']}:{worker['port']})")
    ssh_port = 22 if cfg.is_local else cfg.ssh_port
    with worker_target(cfg, state, worker) as (target, wstate, pubkey):
        extravars = {**base_vars, "base_ssh_pubkey": pubkey, "hardening_allowed_tcp": [ssh_port]}
        changed = run_playbook(target, "server.yml", extravars, say)
        target.close()
        target = operator_login(target, cfg.user, wstate)
        changed += bool(ship_image(target, tag, say))
        extravars.update(worker_vars(state, worker, workers, appliance_address(cfg), cfg.worker_memory),
                         dask_image_tag=tag)
        changed += run_playbook(target, "worker.yml", extravars, say)
        target.close()
    return changed


def release(cfg, state, gone, say):
    """Take the cluster's part off the worker servers no longer wanted (local worker droplets go entirely)."""
    for worker in gone:
        if cfg.is_local:
            from . import droplet
            droplet.remove_worker(int(worker["name"].rsplit("-", 1)[1]), say)
            continue
        from .playbook import run_playbook
        with worker_target(cfg, state, {**worker, "created": False}) as (target, _, _):
            run_playbook(target, "worker.yml", {**layout.role_vars(cfg.user), **appliance_vars(state, [], ""),
                                                "dask_image_tag": "", "hardening_allowed_tcp": [cfg.ssh_port]}, say)
