#!/usr/bin/env python3
"""Run the test suite on a fresh Debian 12 machine: `python3 tests/run.py [pytest args]`.

Installs what the tests need (Debian packages as root, the pinned Python
packages with the test extras into .venv), then runs pytest. The Docker engine
and the base image are made ready by the session fixtures. Quick subset while
iterating: `python3 tests/run.py -m "not e2e"`.
"""
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance import bootstrap  # noqa: E402
from appliance.errors import ApplianceError  # noqa: E402

DEBIAN_PACKAGES = ["nginx", "apache2-utils", "openssl", "debootstrap", "chromium", "openssh-client", "openssh-server",
                   "python3-bcrypt", "certbot", "pebble",  # certbot and Pebble: tests/test_acme_certbot.py
                   "wrk",  # bench/load.py's parsing of its output: tests/test_bench_load.py
                   "iproute2"]  # tc: the shaped uplink of tests/test_e2e_build_on_server.py
NODE_PACKAGES = ["nodejs", "npm"]  # for @jupyterlab/services; only when no npm is there (another build may be)

if __name__ == "__main__":
    try:
        if not bootstrap.in_venv():
            bootstrap.apt_install(DEBIAN_PACKAGES + (NODE_PACKAGES if not shutil.which("npm") else []), "the tests")
        bootstrap.reexec_in_venv(__file__, extras=("test",))
    except ApplianceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    import pytest
    os.chdir(ROOT)
    args = sys.argv[1:]
    paths = [a for a in args if not a.startswith("-") and os.path.exists(a.split("::")[0])]
    sys.exit(pytest.main(args if paths else ["tests", *args]))  # named test files: only those
