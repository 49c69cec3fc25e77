"""How the notebook image gets onto the server: built here and sent (ship.py), or built on the server.

Sending the built image costs its compressed size over the operator's uplink (the scipy image: 691 MB with
gzip -1); building on the server sends only the root image (99 MB) and the build contexts, and the server
fetches the wheels itself. `plan` decides, before server.yml runs:
- the server already holds an image built from the same sources (images.source_key): nothing to do;
- --build-on here|server decides; with a Dask cluster the image is built here (the workers get it from here);
- auto: the local droplet shares this machine's engine and CPUs: here. Else the server builds when it
  reaches the package index and the upload rate, measured by sending PROBE_BYTES over SSH, is below
  SHIP_ABOVE; else the image is built here and sent.
When the server builds, the root image (if it lacks it) goes to a private temporary directory there while
server.yml runs and is loaded once Docker is set up; the build itself runs while site.yml sets up nginx
and the login (the jupyter role waits for an image with the wanted source key before it starts the
container).
"""
import contextlib
import os
import socket
import subprocess
import threading
import time
import zlib
from pathlib import Path

import docker

from . import console, engine, images
from .errors import DeployError
from .ship import ship_image
from .ssh import last_line, remote_json

PROBE_BYTES = 4 << 20
# The rate above which sending the image beats building it on the server (docs/benchmarks.md): sending
# 691 MB vs sending 99 MB and a ~92 s build (base 30 s + scipy 61 s on 2 cores): 592 MB / 92 s ≈ 6.4 MB/s.
SHIP_ABOVE = 6.4e6  # bytes per second (51 Mbit/s)
INDEX_HOSTS = ("pypi.org:443", "files.pythonhosted.org:443")


def upload_rate(target):
    """Bytes per second sent to the server over SSH: PROBE_BYTES of random data, less a round trip."""
    started = time.monotonic()
    target.ssh("true", capture_output=True, stdin=subprocess.DEVNULL)
    round_trip = time.monotonic() - started
    started = time.monotonic()
    target.ssh("cat > /dev/null", input=os.urandom(PROBE_BYTES), capture_output=True)
    return PROBE_BYTES / max(time.monotonic() - started - round_trip, 1e-3)


class Delivery:
    """One `up`'s way of putting the image on the server: plan() before server.yml, loaded_root() after it
    (still as the first login), deliver() as the operator; close() in any case."""

    def __init__(self, cfg, key, ca_bundle, packages, say):
        self.cfg, self.key, self.ca_bundle, self.packages, self.say = cfg, key, ca_bundle, packages, say
        self.mode, self.upload, self.upload_dir = None, None, None
        self.build, self.failure, self.changed = None, None, False

    def plan(self, target, cluster):
        tag = images.tag(self.cfg.image)
        facts = remote_json(target, "delivery", tag, images.SOURCE, images.ROOT_IMAGE, *INDEX_HOSTS)
        if cluster or self.cfg.build_on == "here":
            self.mode = "here"
        elif (facts["image"] or {}).get("source") == self.key:
            self.mode = "present"
            self.say(f"Image {tag} on the server is built from the same sources ({facts['image']['id'][:19]})")
            return
        elif self.cfg.build_on == "server":
            self.mode = "server"
        elif self.cfg.is_local:
            self.mode = "here"
        elif not facts["index"]:
            self.mode = "here"
            self.say("The server does not reach the package index: the image is built here and sent")
        else:
            rate = upload_rate(target)
            self.mode = "server" if rate < SHIP_ABOVE else "here"
            self.say(f"Upload to the server: {rate * 8 / 1e6:.0f} Mbit/s: " + (
                "the server builds the image (it fetches the packages itself)" if self.mode == "server" else
                "the image is built here and sent"))
        if self.mode == "here":
            images.build(self.cfg.image, ca_bundle=self.ca_bundle, packages=self.packages, say=self.say)
        elif (facts["root"] or {}).get("id") != engine.client().images.get(images.ROOT_IMAGE).id:
            self._start_root_upload(target)

    def _start_root_upload(self, target):
        """Send the root image (docker save, gzip -1) into a new private directory on the server, in the
        background (server.yml runs meanwhile)."""
        self.say(f"Sending the root image {images.ROOT_IMAGE} to the server in the background")
        self.upload = subprocess.Popen(target.argv("d=$(mktemp -d /var/tmp/appliance-root.XXXXXXXX) && echo $d && "
                                                   'cat > "$d/root.tar.gz"'),
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.upload_dir = self.upload.stdout.readline().decode().strip()
        self.upload_error = None

        def send():
            gzip = zlib.compressobj(1, zlib.DEFLATED, 31)
            try:
                for chunk in engine.client().api.get_image(images.ROOT_IMAGE, chunk_size=1 << 20):
                    self.upload.stdin.write(gzip.compress(chunk))
                self.upload.stdin.write(gzip.flush())
                self.upload.stdin.close()
            except (OSError, docker.errors.DockerException) as exc:
                self.upload_error = str(exc)
        self.sender = threading.Thread(target=send, daemon=True)
        self.sender.start()

    def loaded_root(self, target):
        """Wait for the root image's upload and load it (Docker is set up now)."""
        if not self.upload:
            return
        with console.working("Loading the root image on the server", self.say):
            self.sender.join()
            err = self.upload.stderr.read().decode(errors="replace")
            if self.upload.wait() != 0 or self.upload_error:
                raise DeployError(f"sending the root image failed: {self.upload_error or last_line(err)}")
            r = target.ssh(target.sudo(f"docker load -q -i {self.upload_dir}/root.tar.gz"), capture_output=True,
                           text=True, stdin=subprocess.DEVNULL)
            if r.returncode != 0:
                raise DeployError(f"loading the root image on the server failed: {last_line(r.stderr)}")
        self._remove_upload(target)

    def _remove_upload(self, target):
        if self.upload_dir.startswith("/var/tmp/appliance-root."):
            target.ssh(f"rm -rf {self.upload_dir}", capture_output=True, stdin=subprocess.DEVNULL)
        self.upload = None

    def deliver(self, target, work):
        """Put the image on the server as planned: sent now, or built there in the background (wait())."""
        if self.mode == "here":
            self.changed = bool(ship_image(target, images.tag(self.cfg.image), self.say))
        elif self.mode == "server":
            self.say(f"Building {images.tag(self.cfg.image)} on the server while the appliance is set up")
            self.build = threading.Thread(target=self._build, args=(target, work), daemon=True)
            self.build.start()

    def _build(self, target, work):
        started = time.monotonic()
        try:
            with server_engine(target, work) as client:
                images.build(self.cfg.image, ca_bundle=self.ca_bundle, packages=self.packages, client=client,
                             say=self.say, progress=images.Progress(_Lines("server build: ", self.say)))
            self.changed = True
            self.say(f"Image built on the server in {time.monotonic() - started:.0f} s")
        except Exception as exc:  # reported by wait(), in the main thread
            self.failure = exc

    def failed(self):
        """Whether the build on the server has failed (site.yml then stops)."""
        return self.failure is not None

    def wait(self):
        """Whether the image changed on the server; raises what the build on the server raised."""
        if self.build:
            self.build.join()
        if self.failure:
            raise self.failure
        return self.changed

    def close(self, target):
        """After a failure or Ctrl+C: stop the upload and remove what it left on the server."""
        if self.upload:
            self.upload.kill()
            self.upload.wait()
            if self.upload_dir:
                self._remove_upload(target)


class _Lines:
    """A non-terminal output for a build running beside Ansible: whole lines, prefixed, through say."""

    def __init__(self, prefix, say):
        self.prefix, self.say = prefix, say

    def isatty(self):
        return False

    def write(self, text):
        for line in text.splitlines():
            if line.strip():
                self.say(self.prefix + line.strip())

    def flush(self):
        pass


def _pump(read, write, done):
    try:
        while data := read(1 << 16):
            write(data)
    except OSError:
        pass
    done()


@contextlib.contextmanager
def server_engine(target, work):
    """A Docker client for the server's engine: a unix socket in the private directory `work` whose every
    connection is carried to the server's engine by `docker system dial-stdio` over SSH (as root there)."""
    path = Path(work) / "server-docker.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(8)
    relays = []

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # closed
                return
            proc = subprocess.Popen(target.argv(target.sudo("docker system dial-stdio")), stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
            relays.append((conn, proc))

            def write(data, stdin=proc.stdin):
                stdin.write(data)
                stdin.flush()
            threading.Thread(target=_pump, args=(conn.recv, write, proc.stdin.close), daemon=True).start()
            threading.Thread(target=_pump, args=(proc.stdout.read, conn.sendall,
                                                 lambda c=conn: _shutdown(c)), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    client = docker.DockerClient(base_url=f"unix://{path}", timeout=300)
    try:
        yield client
    finally:
        client.close()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        listener.close()
        for conn, proc in relays:
            proc.kill()
            proc.wait()
            conn.close()
        path.unlink(missing_ok=True)


def _shutdown(conn):
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
