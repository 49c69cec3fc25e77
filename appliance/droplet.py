"""The local droplet: a bare Debian 12 server in a container on this machine.

It boots systemd, runs sshd and (once provisioned) its own Docker engine, and
is reached over SSH on 127.0.0.1:2222 exactly like a cloud server. Notebooks
live in a named volume, so `down` without --purge keeps them.
"""
import contextlib
import dataclasses
import io
import socket
import tarfile
import time

import docker
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from . import engine, images, ssh
from .errors import DeployError
from .state import State

NAME = "appliance-droplet"
IMAGE = "appliance/droplet:latest"
PORTS = {22: 2222, 80: 8080, 443: 8443}  # droplet port -> 127.0.0.1 port
VOLUMES = {"appliance-droplet-docker": "/var/lib/docker",  # the inner engine needs a real volume
           "appliance-droplet-home": "/home"}
KEY = "droplet_ed25519"


def _ssh_key(state):
    """The operator key for the droplet, made once (0600 in the state directory)."""
    if state.read(KEY) is None:
        key = ed25519.Ed25519PrivateKey.generate()
        state.write(KEY, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()), secret=True)
    key = serialization.load_ssh_private_key(state.read(KEY), password=None)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return state.file(KEY), public + b" appliance-operator\n"


WORKER_SSH_PORT = 2300  # worker droplet i: 127.0.0.1:2300+i -> its sshd


@dataclasses.dataclass(frozen=True)
class Spec:
    """One droplet container: the appliance's (index 0) or Dask worker droplet `index`."""
    index: int = 0

    @property
    def name(self):
        return f"appliance-worker-{self.index}" if self.index else NAME

    @property
    def what(self):
        return f"worker droplet {self.index}" if self.index else "local droplet"

    @property
    def ports(self):
        return {22: WORKER_SSH_PORT + self.index} if self.index else PORTS

    @property
    def volumes(self):
        return {f"{self.name}-docker": "/var/lib/docker"} if self.index else VOLUMES


def _container(client, spec=Spec()):
    try:
        return client.containers.get(spec.name)
    except docker.errors.NotFound:
        return None


def _check_ports(spec):
    for inner, port in spec.ports.items():
        with socket.socket() as s:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))
            except OSError:
                raise DeployError(f"port 127.0.0.1:{port} (the {spec.what}'s {inner}) is already taken by "
                                  "another program; stop it and run again") from None


def build_image(client, say):
    """The droplet image (Debian 12 with systemd and sshd), from the root image made here when missing."""
    images.ensure_root_image(client, images.ROOT_IMAGE, say)
    say("Building the local droplet image (Debian 12 with systemd and sshd)")
    images.build_directory(client, "droplet", {"BASE_IMAGE": images.ROOT_IMAGE}, image_tag=IMAGE)
    return IMAGE


def host_config(client, ports, volumes, devices=()):
    """A droplet container's host config: what systemd and an inner dockerd need without --privileged (which
    fails on some hosts), its named volumes, block devices ("host:container" paths) and ports on 127.0.0.1."""
    config = client.api.create_host_config(
        cap_add=["ALL"], cap_drop=["SYS_RESOURCE"], security_opt=["seccomp=unconfined", "apparmor=unconfined"],
        cgroupns="host", tmpfs={"/run": "", "/run/lock": ""}, devices=list(devices),
        binds={"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
               **{name: {"bind": path, "mode": "rw"} for name, path in volumes.items()}},
        port_bindings={inner: ("127.0.0.1", port) for inner, port in ports.items()})
    config.update(MaskedPaths=[], ReadonlyPaths=[])  # docker run --security-opt systempaths=unconfined
    return config


def _create(client, spec, say):
    _check_ports(spec)
    build_image(client, say)
    say(f"Starting the {spec.what}")
    created = client.api.create_container(IMAGE, name=spec.name, hostname=spec.name.replace("appliance-", ""),
                                          host_config=host_config(client, spec.ports, spec.volumes),
                                          ports=list(spec.ports), detach=True)
    client.api.start(created["Id"])
    return client.containers.get(created["Id"])


def _authorize(container, public):
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("authorized_keys")
        info.size, info.mode = len(public), 0o600
        tar.addfile(info, io.BytesIO(public))
    container.put_archive("/root/.ssh", data.getvalue())


def _wait_for_ssh(port, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if ssh.greets("127.0.0.1", port):
                return
        time.sleep(0.5)
    raise DeployError(f"the droplet's sshd did not answer on 127.0.0.1:{port} within {timeout} s")


def ensure(cfg, say=print, create=True, index=0):
    """How to reach the local droplet (or worker droplet `index`) over SSH, and its address on Docker's
    bridge (where the droplets reach each other); it is created or started only when create is true."""
    spec = Spec(index)
    client = engine.client(install=create, say=say)
    key_path, public = _ssh_key(State(cfg.target_dir).ensure())
    container = _container(client, spec)
    created = container is None
    if not create and (created or container.status != "running"):
        raise DeployError(f"the {spec.what} is not running; `provision.py up` starts it")
    if created:
        container = _create(client, spec, say)
    elif container.status != "running":
        say(f"Starting the {spec.what}")
        container.start()
    _authorize(container, public)
    _wait_for_ssh(spec.ports[22])
    container.reload()
    return {"host": "127.0.0.1", "port": spec.ports[22], "user": "root", "key": str(key_path), "created": created,
            "address": container.attrs["NetworkSettings"]["IPAddress"]}


def address(index=0):
    """The droplet's address on Docker's bridge, where the droplets reach each other."""
    container = _container(engine.client(), Spec(index))
    if container is None:
        raise DeployError(f"the {Spec(index).what} is not running; `provision.py up` starts it")
    return container.attrs["NetworkSettings"]["IPAddress"]


def remove(client, spec, say):
    container = _container(client, spec)
    if container is not None:
        say(f"Stopping and removing the {spec.what}")
        container.stop(timeout=20)
        container.remove(force=True)
    return container is not None


def remove_worker(index, say=print):
    """A worker droplet and its engine's data (it keeps nothing of the user's)."""
    client = engine.client()
    remove(client, Spec(index), say)
    for name in Spec(index).volumes:
        with contextlib.suppress(docker.errors.NotFound):
            client.volumes.get(name).remove(force=True)


def worker_indexes():
    return sorted(int(c.name.rsplit("-", 1)[1]) for c in engine.client().containers.list(
        all=True, filters={"name": "appliance-worker-"}) if c.name.rsplit("-", 1)[1].isdigit())


def down(purge=False, say=print):
    client = engine.client()
    for index in worker_indexes():
        remove_worker(index, say)
    if not remove(client, Spec(), say):
        say("No local droplet is running")
    for name in VOLUMES if purge else ():
        try:
            client.volumes.get(name).remove(force=True)
            say(f"Deleted volume {name}")
        except docker.errors.NotFound:
            pass
    if not purge:
        say("Notebooks are kept (volume appliance-droplet-home); `down --purge` deletes them")
