

# item 5 ------------------------------------------------------------------------------------------------
# The notebook user swaps directories of its notebooks for symlinks to /etc and the TLS directory while
# `backup` walks them as root on the server: no archive may hold a byte of what they point to.
import gzip as _gzip  # noqa: E402  (this section's own imports: another section starts the file)
import subprocess as _subprocess  # noqa: E402

import pytest as _pytest  # noqa: E402

from appliance import layout as _layout  # noqa: E402
from helpers import DROPLET as _DROPLET, in_droplet as _in_droplet, provision as _provision  # noqa: E402


@_pytest.mark.e2e
@_pytest.mark.docker
def test_backup_with_a_racing_symlink_swap_copies_no_host_file(appliance, tmp_path):
    home = "/home/ds"
    notebooks = _layout.notebooks_dir("ds")
    host_files = {"/etc/shadow": _in_droplet("cat", "/etc/shadow").encode(),
                  _layout.TLS_KEY: _in_droplet("cat", _layout.TLS_KEY).encode()}
    pairs = [(f"{notebooks}/race-etc", "/etc", "shadow"),
             (f"{notebooks}/race-tls", _layout.TLS_DIR, _layout.TLS_KEY.rsplit("/", 1)[1])]
    setup = " && ".join(f"mkdir -p {d} && echo harmless > {d}/{name}" for d, _, name in pairs)
    swap = "; ".join(f"mv -T {d} {home}/.parked-{i} && ln -sT {target} {d}"
                     for i, (d, target, _) in enumerate(pairs))
    back = "; ".join(f"rm -f {d} && mv -T {home}/.parked-{i} {d}" for i, (d, _, _) in enumerate(pairs))
    _in_droplet("su", "ds", "-s", "/bin/sh", "-c", setup)
    racer = _subprocess.Popen(["docker", "exec", "-u", "ds", _DROPLET, "sh", "-c",
                               f"end=$(($(date +%s) + 240)); while [ $(date +%s) -lt $end ] && "
                               f"[ ! -e {home}/.race-stop ]; do {swap}; {back}; done"])
    made = 0
    try:
        for i in range(8):
            archive = tmp_path / f"race-{i}.tar.gz"
            r, _ = _provision("backup", "--out", str(archive), env=appliance["env"])
            if r.returncode == 0:
                made += 1
                raw = _gzip.decompress(archive.read_bytes())
                for path, data in host_files.items():
                    assert data not in raw, f"backup {i} holds {path}"
    finally:
        _in_droplet("su", "ds", "-s", "/bin/sh", "-c", f"touch {home}/.race-stop")
        racer.wait(60)
        _in_droplet("sh", "-c", f"rm -rf {home}/.race-stop {home}/.parked-* " + " ".join(d for d, _, _ in pairs))
    assert made >= 4  # the swaps did not simply make every backup fail
