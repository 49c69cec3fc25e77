"""Code that runs on the server (standard library only, plus Debian's python3-bcrypt for authd.py and
python3-cryptography for acme.py).

* authd.py: the login verifier, installed at layout.AUTHD and run by systemd.
* acme.py (--tls acme only): the ACME certificate's request, renewal, deploy hook and removal, installed
  at layout.ACME_SCRIPT like authd.py (a rendered file); uses Debian's python3-cryptography, which
  certbot brings.
* remote.py: what day-2 commands run there; its source goes over SSH as `python3 -c`, nothing stays.
* archive.py: the backup archive check and chain IDs, used on both ends; observe.py: what `up`'s fast
  path observes. remote_source() sends both to the server ahead of remote.py, so they run there as one
  script.
"""
from pathlib import Path

HERE = Path(__file__).resolve().parent


def remote_source():
    """The script `python3 -c` runs on the server: archive.py's and observe.py's sources, then remote.py's."""
    return "\n".join((HERE / name).read_text() for name in ("archive.py", "observe.py", "remote.py"))
