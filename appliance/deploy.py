"""`up`: turn a server (or the local droplet) into the appliance over SSH.

Steps: with --tls acme check that the domain resolves to the server, prepare the local state (CA,
certificate, htpasswd), reach the server (ssh.py), check its disks (and the ACME directory, from there),
decide where the notebook image is built (delivery.py: here, or on the server over a slow link), run
ansible/server.yml, switch to the operator's login, put the image on the server (sent, or built there),
render the server's files into a private temporary directory, then run ansible/site.yml (playbook.py;
a build on the server runs beside it). When the server is as the last full run left it (appliance/digest.py:
one round trip), nothing is built and the playbooks are skipped.
"""
import re
import shutil
import subprocess
import time
from pathlib import Path

from . import acme, bootstrap, cluster, config, digest, engine, images, layout, render, tls
from .errors import DeployError
from .playbook import run_playbook
from .delivery import Delivery
from .ssh import connect, operator_login, refuse_system_account, remote_json

FIRST_RUN = ("First run for this server: expect about 5 minutes (on a fresh machine it also makes the base "
             "images and builds the notebook image); later runs take under a minute.")


def check_disk(target, user):
    """Refuse to start when the server is nearly out of space: better than a half-written config."""
    for disk in remote_json(target, "disks", *layout.server_paths(user)):
        if disk["low"]:
            raise DeployError(f"the server is nearly out of disk space: {disk['path']} has "
                              f"{disk['free'] / 1e6:.0f} MB free of {disk['size'] / 1e6:.0f} MB; free some "
                              "space (e.g. `docker image prune` there) and run again")


def nginx_version(target):
    """(major, minor, patch) of the nginx the server has, or that apt would install; None if unknown."""
    r = target.ssh("dpkg-query -W -f '${Version}' nginx 2>/dev/null || "
                   "apt-cache policy nginx | sed -n 's/^ *Candidate: //p'",
                   capture_output=True, text=True, stdin=subprocess.DEVNULL)
    found = re.match(r"(?:\d+:)?(\d+)\.(\d+)\.(\d+)", r.stdout.strip())
    return tuple(int(n) for n in found.groups()) if found else None


def role_inputs(cfg, server_ssh_port=None):
    """What every role takes from the layout and cfg; the firewall opens the ports sshd and nginx listen on
    (for the local droplet those inside it: 127.0.0.1:2222 and the like are Docker's publishes here)."""
    ssh_port = server_ssh_port or (22 if cfg.is_local else cfg.ssh_port)
    return {**layout.role_vars(cfg.user), "hardening_allowed_tcp": sorted({ssh_port, cfg.http_port, cfg.https_port}),
            "web_tls": cfg.tls}


def check_tls(cfg, target, say):
    """With --tls acme, the ACME directory must answer from the server (before anything changes there).
    Without it, say so when the server has an ACME certificate: this run switches back to the private CA."""
    if cfg.tls == "acme":
        bundle = config.read_ca_bundle(cfg.acme_ca_bundle) if cfg.acme_ca_bundle else None
        acme.check_directory(target, cfg.acme_directory_url, bundle)
        return
    found = remote_json(target, "acme", layout.ACME_CONFIG, layout.ACME_STATUS, f"{layout.ACME_SERVICE}.timer",
                        layout.TLS_CERT)["acme"]
    if found:
        say(f"This run has no --tls acme: the certificate for {found['domain']} from "
            f"{acme.ca_name(found['directory'])}, its renewal configuration and timer are removed, and the private "
            "CA's certificate is served again")


def certificate_summary(cfg, target, cert, state, say):
    """`up`'s last lines about the certificate; raises DeployError when the ACME CA gave none."""
    if cfg.tls != "acme":
        say(f"  certificate:   SHA-256 {tls.fingerprint(cert)}")
        say(f"  trust it once: import {state.file('ca.crt')} as a certificate authority in your browser")
        return
    facts = remote_json(target, "acme", layout.ACME_CONFIG, layout.ACME_STATUS, f"{layout.ACME_SERVICE}.timer",
                        layout.TLS_CERT)
    served, last = acme.certificate(facts["certificate_pem"]), (facts["acme"] or {}).get("last") or {}
    if served:
        say(f"  certificate:   from {served['issuer']}, valid until {served['expires'][:10]}, "
            f"SHA-256 {served['sha256']}")
    if not last.get("ok"):
        if served and served["sha256"] == tls.fingerprint(cert):  # the private CA's is served meanwhile
            say(f"  meanwhile:     import {state.file('ca.crt')} to trust the private CA's certificate")
        raise DeployError(acme.failure(cfg, {"message": "no attempt was recorded", **last}))
    say(f"  renewal:       on the server, {layout.ACME_SERVICE}.timer twice a day; `status` shows the last attempt")


def appliance_vars(cfg, state, extravars, rendered, nginx, workers, tag):
    """site.yml's variables: extravars, the server's files rendered under `rendered`, the cluster's."""
    files = render.render(cfg, state, rendered, nginx_version=nginx, cluster=bool(workers))
    return {**extravars, **render.role_files(files, rendered), "dask_image_tag": tag,
            **cluster.appliance_vars(state, workers, cluster.appliance_address(cfg) if workers else "")}


def summary(cfg, target, cert, state, where, started, changed, say):
    say(f"\nReady in {time.monotonic() - started:.0f} s, changed={changed}")
    say(f"  open:          {cfg.url}")
    say(f"  login:         {cfg.user}, with {where}")
    certificate_summary(cfg, target, cert, state, say)


def up(cfg, ca_bundle=None, say=print, ready=None, server_ssh_port=None):
    """Provision cfg's target; returns the number of changes made. `ready(target)` runs first over the first
    connection (a cloud server: wait for cloud-init); `server_ssh_port` is sshd's port there when the one
    reached differs (a test's port mapping)."""
    if not shutil.which("ssh"):
        bootstrap.apt_install(["openssh-client"], "SSH to the server")
    started = time.monotonic()
    if cfg.tls == "acme":
        acme.check_dns(cfg, say=say)
    state, cert, where = render.prepare(cfg)
    if not state.known_hosts.exists():
        say(FIRST_RUN)
    with connect(cfg, state, create=True, say=say) as (target, pubkey, work):
        if ready:
            ready(target)
        refuse_system_account(target, cfg.user)
        check_disk(target, cfg.user)
        check_tls(cfg, target, say)
        client = engine.client()
        images.ensure_root_image(client, say=say)
        key = images.source_key(cfg.image, client.images.get(images.ROOT_IMAGE).id, images.trusted_cas(ca_bundle),
                                state.packages())
        tag = images.tag(cfg.image)
        extravars = {
            **role_inputs(cfg, server_ssh_port),
            "base_ssh_pubkey": pubkey,
            "base_timezone": cfg.timezone,
            "base_swap_mb": cfg.swap_mb,
            "jupyter_image_tag": tag,
            "jupyter_image_source": key,
            "jupyter_memory": cfg.memory,
            "jupyter_cpus": cfg.cpus,
        }
        base_vars = dict(extravars)  # what a worker server's server.yml takes too
        cluster_wanted = bool(cfg.worker_list([w["name"] for w in state.workers()]))
        # the fast path: a server without a cluster that a full run left as it is now
        if state.login() == cfg.user and not state.workers() and not cluster_wanted:
            wanted = appliance_vars(cfg, state, extravars, Path(work) / "check", nginx_version(target), [], tag)
            if digest.unchanged(target, wanted, key, say):
                summary(cfg, target, cert, state, where, started, 0, say)
                return 0
        image = Delivery(cfg, key, ca_bundle, state.packages(), say)
        try:
            image.plan(target, cluster_wanted)
            changed = run_playbook(target, "server.yml", extravars, say)
            image.loaded_root(target)
        finally:
            image.close(target)
        target.close()
        target = operator_login(target, cfg.user, state)
        image.deliver(target, work)
        workers = cluster.wanted(cfg, state, say)  # the Dask workers (local ones made now: their addresses)
        gone = [w for w in state.workers() if w["name"] not in {x["name"] for x in workers}]
        cluster.retire(target, [w["name"] for w in gone], say)
        cluster.release(cfg, state, gone, say)
        changed += len(gone)
        # after server.yml: its package lists say which nginx comes
        extravars = appliance_vars(cfg, state, extravars, Path(work) / "render", nginx_version(target), workers, tag)
        # closes the root and password doors; the server may be building the image meanwhile (the jupyter
        # role waits for it; a failed build stops the playbook and is the error raised)
        changed += run_playbook(target, "site.yml", extravars, say, abort=image.failed)
        changed += image.wait()
        for worker in workers:
            changed += cluster.provision_worker(cfg, state, worker, workers, tag, base_vars, say)
        state.set_workers([{k: w[k] for k in ("name", "host", "port", "address")} for w in workers])
        if not workers:
            digest.record(target, extravars, key, say)
        try:
            summary(cfg, target, cert, state, where, started, changed, say)
        finally:
            target.close()  # the operator's connection (connect() closes the first one)
    return changed
