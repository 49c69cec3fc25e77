"""Backup archives and image layers as both ends see them: standard library only, Python 3.9+.

Imported on the operator's machine (ops.py checks a backup, ship.py computes chain IDs) and sent
to the server ahead of remote.py (appliance.server.remote_source), so one piece of code checks an
archive on both ends.

Backup archives are tar.gz: `notebooks/...` (regular files and directories
only) followed by `MANIFEST.sha256` in sha256sum format.
"""
import hashlib
import tarfile

TOP = "notebooks"
MANIFEST = "MANIFEST.sha256"


class ArchiveError(Exception):
    pass


class Hashing:
    def __init__(self, f):
        self.f, self.h = f, hashlib.sha256()

    def read(self, n=-1):
        data = self.f.read(n)
        self.h.update(data)
        return data


def _safe_name(name):
    parts = name.split("/")
    if name.startswith("/") or ".." in parts or "" in parts[1:] or parts[0] not in (TOP, MANIFEST):
        raise ArchiveError(f"the archive holds a path outside {TOP}/: {name!r}")
    return name


def read_archive(fileobj, write_file=None, make_dir=None):
    """Stream through an archive checking every file against the manifest; returns {name: sha256}.

    write_file(member, reader) / make_dir(member) are called to extract; a bad
    archive raises ArchiveError (possibly after some calls).
    """
    digests, listed = {}, None
    try:
        with tarfile.open(fileobj=fileobj, mode="r|gz") as tar:
            for member in tar:
                name = _safe_name(member.name.rstrip("/"))
                if name == MANIFEST:
                    data = tar.extractfile(member).read().decode()
                    listed = dict(reversed(line.split("  ", 1)) for line in data.splitlines() if line)
                elif member.isdir():
                    make_dir and make_dir(member)
                elif member.isfile():
                    reader = Hashing(tar.extractfile(member))
                    if write_file:
                        write_file(member, reader)
                    while reader.read(1 << 20):
                        pass
                    digests[name] = reader.h.hexdigest()
                else:
                    raise ArchiveError(f"the archive holds something that is not a file or directory: {name!r}")
    except (tarfile.TarError, OSError, EOFError, UnicodeDecodeError, ValueError) as exc:
        raise ArchiveError(f"the archive is damaged or not a backup: {exc}") from None
    if listed is None:
        raise ArchiveError(f"the archive has no {MANIFEST}: not a backup made by provision.py")
    if listed != digests:
        bad = sorted(set(listed.items()) ^ set(digests.items()))
        raise ArchiveError(f"the archive does not match its checksums ({len(bad)} mismatches, "
                           f"first: {bad[0][0]!r})")
    return digests




def chain_ids(diff_ids):
    """The chain ID of each layer of an image, from its layers' diff IDs (as docker computes them)."""
    chain = None
    for diff in diff_ids:
        chain = diff if chain is None else "sha256:" + hashlib.sha256(f"{chain} {diff}".encode()).hexdigest()
        yield chain
