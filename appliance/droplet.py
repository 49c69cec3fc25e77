"""The local droplet: a bare Debian 12 server in a container on this machine.

It boots systemd, runs sshd and (once provisioned) its own Docker engine, and
is reached over SSH on 127.0.0.1:2222 exactly like a cloud server. Notebooks
live in a named volume, so `down` without --purge keeps them.
"""
import contextlib
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


def _container(client):
    try:
        return client.containers.get(NAME)
    except docker.errors.NotFound:
        return None


def _check_ports():
    for inner, port in PORTS.items():
        with socket.socket() as s:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))
            except OSError:
                raise DeployError(f"port 127.0.0.1:{port} (the local droplet's {inner}) is already taken by "
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


def _create(client, say):
    _check_ports()
    build_image(client, say)
    say("Starting the local droplet")
    created = client.api.create_container(IMAGE, name=NAME, hostname="droplet",
                                          host_config=host_config(client, PORTS, VOLUMES),
                                          ports=list(PORTS), detach=True)
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
    raise DeployError(f"the local droplet's sshd did not answer on 127.0.0.1:{port} within {timeout} s")


def ensure(cfg, say=print, create=True):
    """How to reach the local droplet over SSH; it is created or started only when create is true."""
    client = engine.client(install=create, say=say)
    key_path, public = _ssh_key(State(cfg.target_dir).ensure())
    container = _container(client)
    created = container is None
    if not create and (created or container.status != "running"):
        raise DeployError("the local droplet is not running; `provision.py up` starts it")
    if created:
        container = _create(client, say)
    elif container.status != "running":
        say("Starting the local droplet")
        container.start()
    _authorize(container, public)
    _wait_for_ssh(PORTS[22])
    return {"host": "127.0.0.1", "port": PORTS[22], "user": "root", "key": str(key_path), "created": created}


def down(purge=False, say=print):
    client = engine.client()
    container = _container(client)
    if container is not None:
        say("Stopping and removing the local droplet")
        container.stop(timeout=20)
        container.remove(force=True)
    else:
        say("No local droplet is running")
    for name in VOLUMES if purge else ():
        try:
            client.volumes.get(name).remove(force=True)
            say(f"Deleted volume {name}")
        except docker.errors.NotFound:
            pass
    if not purge:
        say("Notebooks are kept (volume appliance-droplet-home); `down --purge` deletes them")
