"""The local state directory of one target: what must stay stable across runs.

`.appliance/<host>/` is 0700; files holding secrets are 0600. Every write is
atomic (temporary file in the same directory, fsync, rename), so an
interrupted run never leaves a half-written file behind.
"""
import json
import os
import stat
import tempfile
from pathlib import Path

from .errors import StateError


LOGIN = "ssh_login"  # the user SSH logs in as once the server is hardened
PACKAGES = "packages"  # the image's extra Python packages (`rebuild --package`), one per line
WORKERS = "workers.json"  # the Dask worker servers (appliance/cluster.py): names and addresses, no secret
CLOUD = "cloud.json"  # the identity of a server created through a cloud API (appliance/cloud): no secret


class State:
    def __init__(self, path):
        self.path = Path(path)

    @property
    def known_hosts(self):
        """The target's pinned SSH host keys."""
        return self.file("known_hosts")

    def login(self):
        """The user SSH logs in as (None until the operator's login has been proven)."""
        return (self.read(LOGIN) or b"").decode().strip() or None

    def set_login(self, user):
        if user is None:
            self.file(LOGIN).unlink(missing_ok=True)
        else:
            self.write(LOGIN, user)

    def packages(self):
        """The image's extra packages for this target (NAME==VERSION, set by `rebuild --package`)."""
        return tuple((self.read(PACKAGES) or b"").decode().split())

    def set_packages(self, packages):
        self.write(PACKAGES, "".join(f"{p}\n" for p in packages))

    def cloud_server(self):
        """{cloud, id, name, region, address, host_key, ...} of the server `up --cloud` created, or None."""
        data = self.read(CLOUD)
        try:
            return json.loads(data) if data else None
        except ValueError:
            raise StateError(f"{self.file(CLOUD)} is not JSON; move it away and run again") from None

    def set_cloud_server(self, server):
        if server is None:
            self.file(CLOUD).unlink(missing_ok=True)
        else:
            self.write(CLOUD, json.dumps(server, indent=1, sort_keys=True) + "\n")

    def workers(self):
        """The Dask worker servers of the last up ([{"name", "host", "address"}])."""
        data = self.read(WORKERS)
        return json.loads(data) if data else []

    def set_workers(self, workers):
        self.write(WORKERS, json.dumps(workers, indent=1, sort_keys=True) + "\n")

    def ensure(self):
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.path, 0o700)
        except OSError as exc:
            raise StateError(f"cannot create the state directory {self.path}: {exc.strerror}") from None
        return self

    def file(self, name):
        return self.path / name

    def read(self, name):
        """The bytes of a state file, or None when it does not exist."""
        path = self.file(name)
        try:
            if not stat.S_ISREG(path.lstat().st_mode):
                raise StateError(f"{path} is not a regular file; move it away and run again")
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {path}: {exc.strerror}") from None

    def write(self, name, data, secret=False):
        """Atomically replace a state file (0600 when secret, else 0644)."""
        self.ensure()
        path = self.file(name)
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as out:
                os.fchmod(out.fileno(), 0o600 if secret else 0o644)
                out.write(data if isinstance(data, bytes) else data.encode())
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path
