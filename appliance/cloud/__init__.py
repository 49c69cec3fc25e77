"""Create, find, destroy and snapshot the appliance's server through a cloud provider's own API.

One order for every provider (`digitalocean.py`, `aws.py` implement the same small interface): the
operator's SSH key (reused by fingerprint), a firewall / security group, a notebooks volume, then the
server from Debian 12 with cloud-init user data that installs an SSH host key made here (pinned before
the first connection) and mounts the volume at the notebooks directory. Whatever this run created is
removed again when creation fails or is interrupted. Credentials come from the environment or the
provider's own config files only; they are never written anywhere.
"""
import dataclasses
import os
import re
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from .. import layout
from ..console import working
from ..errors import CloudError

POLL = 2            # seconds between status polls
SERVER_TIMEOUT = 600
SSH_TIMEOUT = 300
_HOST_KEY = re.compile(r"ssh-ed25519 [A-Za-z0-9+/]+={0,2}")
_PATH = re.compile(r"/[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")


@dataclasses.dataclass(frozen=True)
class Server:
    cloud: str
    id: str
    name: str
    region: str
    address: str | None
    status: str


def provider(cfg):
    if cfg.cloud == "digitalocean":
        from .digitalocean import DigitalOcean
        return DigitalOcean(cfg)
    if cfg.cloud == "aws":
        from .aws import AWS
        return AWS(cfg)
    raise CloudError(f"unknown cloud {cfg.cloud!r}")


def host_key():
    """A fresh Ed25519 SSH host key: (OpenSSH private key text, 'ssh-ed25519 AAAA...')."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return private, public


def user_data(host_private, host_public, device, mount):
    """The cloud-init user data; every value is checked against its grammar before it is rendered."""
    from ..render import environment
    if not _HOST_KEY.fullmatch(host_public) or not host_private.startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n"):
        raise CloudError("refusing to render a host key that is not an OpenSSH Ed25519 key")
    if not (_PATH.fullmatch(device) and _PATH.fullmatch(mount)):
        raise CloudError(f"refusing to render the paths {device!r}, {mount!r}: outside their grammar")
    return environment().get_template("cloud-init.yaml.j2").render(
        host_key_private=host_private.strip(), host_key_public=host_public, device=device, mount=mount)


def known_hosts_line(host, port, host_public):
    where = host if port == 22 else f"[{host}]:{port}"
    return f"{where} {host_public}\n"


def wait_for(what, check, say, timeout=SERVER_TIMEOUT):
    """Poll check() -> (done, status) with progress (status and seconds) until done; returns its last status."""
    with working(what, say=say) as ticker:
        while True:
            done, status = check()
            ticker.update(f"{what}: {status}")
            if done:
                return status
            if ticker.elapsed() > timeout:
                raise CloudError(f"{what}: still {status} after {timeout} s; see the provider's console")
            time.sleep(POLL)


def wait_for_ssh(host, port, say, timeout=SSH_TIMEOUT):
    """Until sshd greets: a port that accepts is not enough (a booting server, a NAT or proxy in front)."""
    from ..ssh import greets

    def check():
        try:
            answered = greets(host, port)
        except OSError as exc:
            return False, exc.strerror or type(exc).__name__
        return answered, "answering" if answered else "no SSH greeting yet"
    wait_for(f"Waiting for SSH on {host}:{port}", check, say, timeout)


def create(prov, name, operator_pubkey, say=print):
    """Find the server called `name` or create it with its key, firewall and volume.

    Returns (Server, host public key or None when the server already existed). On any failure or Ctrl+C the
    server and whatever else this run created are removed again before the error goes on.
    """
    found = prov.find_server(name)
    if found:
        say(f"Found the {prov.title} server {name} ({found.id}, {found.address}): creating nothing")
        return found, None
    made = []  # what this run created (or was creating when it stopped), in order
    try:
        say(f"Creating the {prov.title} server {name} in {prov.region}")
        if not prov.find_key(operator_pubkey):
            made.append("key")
            prov.create_key(operator_pubkey)
        if not prov.find_firewall(name):
            made.append("firewall")
            prov.create_firewall(name)
        volume = prov.find_volume(name)
        if not volume:
            made.append("volume")
            volume = prov.create_volume(name)
        host_private, host_public = host_key()
        data = user_data(host_private, host_public, prov.volume_device(volume), layout.notebooks_dir(prov.user))
        made.append("server")
        server = prov.create_server(name, operator_pubkey, volume, data)
        server = wait_until_up(prov, server, say)
        prov.attach(server, volume, say)
        return server, host_public
    except BaseException:
        cleanup(prov, name, operator_pubkey, made, say)
        raise


def wait_until_up(prov, server, say):
    latest = [server]

    def check():
        latest[0] = prov.get_server(server.id)
        return latest[0].status == prov.running and bool(latest[0].address), latest[0].status
    wait_for(f"Waiting for the server {server.name} ({server.id})", check, say)
    return latest[0]


def cleanup(prov, name, operator_pubkey, made, say):
    """Remove what this run created; found by name (an interrupted call may have created it unseen)."""
    if not made:
        return
    say(f"Creation stopped: removing what this run created ({', '.join(made)})")
    if "server" in made:
        server = prov.find_server(name)
        if server:
            destroy_server(prov, server, say)
    if "volume" in made:
        volume = prov.find_volume(name)
        if volume:
            prov.delete_volume(volume, say)
    if "firewall" in made:
        firewall = prov.find_firewall(name)
        if firewall:
            prov.delete_firewall(firewall)
    if "key" in made:
        key = prov.find_key(operator_pubkey)
        if key:
            prov.delete_key(key)


def destroy_server(prov, server, say):
    prov.delete_server(server)
    wait_for(f"Destroying the server {server.name} ({server.id})", lambda: prov.server_gone(server), say)


def destroy(prov, name, operator_pubkey, purge=False, say=print):
    """Destroy the server; keep the volume, firewall, key and snapshots unless purge. Returns what was removed."""
    removed = []
    server = prov.find_server(name)
    if server:
        destroy_server(prov, server, say)
        removed.append(f"server {server.id}")
    if purge:
        for snap in prov.snapshots(name):
            prov.delete_snapshot(snap)
            removed.append(f"snapshot {snap['name']}")
        volume = prov.find_volume(name)
        if volume:
            prov.delete_volume(volume, say)
            removed.append(f"volume {prov.volume_id(volume)}")
        firewall = prov.find_firewall(name)
        if firewall:
            prov.delete_firewall(firewall)
            removed.append("firewall")
        key = prov.find_key(operator_pubkey)
        if key and not prov.key_in_use(key):
            prov.delete_key(key)
            removed.append("SSH key")
    return removed


def snapshot(prov, name, keep, say=print, now=None):
    """Snapshot the notebooks volume (named and dated), then delete the oldest beyond `keep`."""
    volume = prov.find_volume(name)
    if not volume:
        raise CloudError(f"no notebooks volume for {name} in {prov.title} {prov.region}")
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    taken = {s["name"] for s in prov.snapshots(name)}
    snap_name = next(n for n in (f"appliance-{name}-{stamp}" + (f"-{i}" if i else "") for i in range(len(taken) + 1))
                     if n not in taken)  # two in the same second get different names
    with working(f"Snapshotting the notebooks volume as {snap_name}", say=say):
        prov.create_snapshot(name, volume, snap_name)
    deleted = []
    for old in sorted(prov.snapshots(name), key=lambda s: (s["created"], s["name"]), reverse=True)[keep:]:
        prov.delete_snapshot(old)
        deleted.append(old["name"])
    return snap_name, deleted


PORT_ENV = "APPLIANCE_TEST_CLOUD_SSH_PORT"  # test-only: the port that reaches the server's sshd (a mapping)


def state_of(cfg):
    from ..state import State
    return State(Path(cfg.state_dir) / f"{cfg.cloud}-{cfg.name}")


def up(cfg, ca_bundle=None, say=print, provision=True):
    """`up --cloud`: find or create the server, pin its host key, then provision it like `up --host`."""
    from .. import config, ssh
    from ..state import State
    key_path, pubkey = ssh.public_key(cfg.ssh_key)
    prov = provider(cfg)
    state = state_of(cfg)
    server, host_public = create(prov, cfg.name, pubkey, say)
    address = config.validate_host(server.address)
    port = int(os.environ.get(PORT_ENV) or cfg.ssh_port)
    target_state = State(Path(cfg.state_dir) / address)
    record = state.cloud_server()
    if host_public:
        record = {"cloud": cfg.cloud, "id": server.id, "name": server.name, "region": server.region,
                  "address": address, "host_key": host_public, "ssh_user": prov.login}
        target_state.write("known_hosts", known_hosts_line(address, port, host_public))  # before any contact
        target_state.set_login(None)  # a new server takes the image's login again
        state.set_cloud_server(record)
    elif not record or record["id"] != server.id:
        raise CloudError(f"the {prov.title} server {cfg.name} ({server.id}) was not created from this state "
                         f"directory, so its SSH host key is unknown here; destroy it (down --cloud) or use --host")
    if not provision:
        return server
    from ..ssh import host_key_fingerprint
    host_cfg = dataclasses.replace(cfg, cloud=None, host=address, ssh_port=port, ssh_user=record["ssh_user"],
                                   ssh_key=key_path, ssh_host_key_fingerprint=host_key_fingerprint(
                                       record["host_key"].split()[1]))
    wait_for_ssh(address, port, say)
    from .. import deploy

    def ready(target):
        cloud_init_done(target, say)
        if host_public:  # a new server: its first host key travelled in the user data
            record["host_key"] = rotate_host_key(target, target_state, address, port, say)
            state.set_cloud_server(record)

    return deploy.up(host_cfg, ca_bundle=ca_bundle, say=say, ready=ready, server_ssh_port=cfg.ssh_port)


ROTATE = ("sh -c 'rm -f /etc/ssh/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key.pub && "
          "ssh-keygen -q -t ed25519 -N \"\" -f /etc/ssh/ssh_host_ed25519_key && systemctl reload ssh && "
          "cat /etc/ssh/ssh_host_ed25519_key.pub'")


def rotate_host_key(target, target_state, address, port, say):
    """Replace the host key that came with the user data (the provider's metadata service keeps serving it,
    on DigitalOcean to containers on the server too) by one made there, read over the pinned connection,
    and pin that one instead. Returns the new public key."""
    r = target.ssh(target.sudo(ROTATE), capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    new = " ".join(r.stdout.split()[:2])
    if r.returncode != 0 or not _HOST_KEY.fullmatch(new):
        from ..ssh import last_line
        raise CloudError(f"could not replace the SSH host key on {address}: {last_line(r.stderr)}")
    target_state.write("known_hosts", known_hosts_line(address, port, new))
    say("Replaced the server's SSH host key (the first one was in the user data) and pinned the new one")
    return new


def cloud_init_done(target, say):
    """Wait until cloud-init has finished on the server (host key installed, notebooks volume mounted)."""
    from ..ssh import last_line
    with working("Waiting for cloud-init on the server", say=say):
        r = target.ssh(target.sudo("cloud-init status --wait"), capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=SERVER_TIMEOUT)
    if r.returncode not in (0, 2):  # 2: done with recoverable errors (newer cloud-init)
        raise CloudError(f"cloud-init failed on {target.host}: {last_line(r.stdout + r.stderr)} (see "
                         "/var/log/cloud-init-output.log there)")


def down(cfg, purge=False, say=print):
    from .. import ssh
    _, pubkey = ssh.public_key(cfg.ssh_key)
    removed = destroy(provider(cfg), cfg.name, pubkey, purge=purge, say=say)
    state_of(cfg).set_cloud_server(None)
    return removed
