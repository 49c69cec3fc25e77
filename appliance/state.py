"""The local state directory of one target: what must stay stable across runs.

`.appliance/<host>/` is 0700; files holding secrets are 0600. Every write is
atomic (temporary file in the same directory, fsync, rename), so an
interrupted run never leaves a half-written file behind.
"""
import os
import stat
import tempfile
from pathlib import Path

from .errors import StateError


class State:
    def __init__(self, path):
        self.path = Path(path)

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
