"""Backup archives: what remote.py writes is what archive.py (both ends) accepts; anything else is refused."""
import io
import os
import subprocess
import sys
import tarfile

import pytest

from helpers import rewrite_archive

from appliance import server
from appliance.server import archive


def make_backup(directory):
    """A backup made by the script the server runs (remote.py after archive.py, as `python3 -c`)."""
    r = subprocess.run([sys.executable, "-c", server.remote_source(), "backup", str(directory)],
                       capture_output=True, check=True)
    return r.stdout


@pytest.fixture
def notebooks(tmp_path):
    d = tmp_path / "notebooks"
    (d / "sub dir").mkdir(parents=True)
    (d / "a.ipynb").write_text('{"cells": []}')
    (d / "sub dir" / "data.bin").write_bytes(os.urandom(300_000))
    (d / "empty").mkdir()
    return d


def test_backup_round_trip(notebooks):
    digests = archive.read_archive(io.BytesIO(make_backup(notebooks)))
    assert sorted(digests) == ["notebooks/a.ipynb", "notebooks/sub dir/data.bin"]


@pytest.mark.parametrize("change, message", [
    (lambda n, d: (n, d[:-1] + bytes([d[-1] ^ 1]) if n.endswith(".bin") else d), "checksums"),
    (lambda n, d: ("notebooks/../../etc/x" if n.endswith(".ipynb") else n, d), "outside"),
    (lambda n, d: ("/etc/x" if n.endswith(".ipynb") else n, d), "outside"),
    (lambda n, d: (n, b"" if n == archive.MANIFEST else d), "checksums"),
])
def test_bad_archives_are_refused(notebooks, change, message):
    with pytest.raises(archive.ArchiveError, match=message):
        archive.read_archive(io.BytesIO(rewrite_archive(make_backup(notebooks), change)))


def test_symlinks_and_foreign_archives_are_refused(notebooks, tmp_path):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        link = tarfile.TarInfo("notebooks/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(archive.ArchiveError, match="not a file or directory"):
        archive.read_archive(io.BytesIO(out.getvalue()))
    with pytest.raises(archive.ArchiveError, match="damaged"):
        archive.read_archive(io.BytesIO(make_backup(notebooks)[:-200]))
    with pytest.raises(archive.ArchiveError, match="no MANIFEST"):
        archive.read_archive(io.BytesIO(rewrite_archive(make_backup(notebooks), lambda n, d: (
            "notebooks/x" if n == archive.MANIFEST else n, d))))
