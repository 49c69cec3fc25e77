"""Self-installation: run the tool from its own virtual environment.

Standard library only: this runs before any dependency is installed.
"""
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from . import console
from .errors import SetupError

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
VENV_PYTHON = VENV / "bin" / "python"


def requirements(extras=()):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return reqs


def _say(msg):
    print(f"[setup] {msg}", file=sys.stderr, flush=True)


def apt_install(packages, why):
    """Install Debian packages that are missing, saying so first."""
    missing = [p for p in packages
               if subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True,
                                 text=True).stdout != "install ok installed"]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SetupError(f"{why} needs the Debian packages {' '.join(missing)}; "
                         f"install them (apt-get install {' '.join(missing)}) and run again")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log = ROOT / ".venv-apt.log"
    with open(log, "w") as out, console.working(f"{why}: installing Debian packages {' '.join(missing)} "
                                                "with apt-get", _say, sys.stderr):
        ok = subprocess.run(["apt-get", "update", "-q"], stdout=out, stderr=out, env=env).returncode == 0
        ok = ok and subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
                                   stdout=out, stderr=out, env=env).returncode == 0
    if not ok:
        raise SetupError(f"apt-get could not install {' '.join(missing)}; see {log}")
    log.unlink()


def _make_venv():
    if VENV_PYTHON.exists():
        return
    _say(f"creating the virtual environment {VENV}")
    if subprocess.run([sys.executable, "-m", "venv", str(VENV)], capture_output=True).returncode != 0:
        shutil.rmtree(VENV, ignore_errors=True)
        apt_install(["python3-venv"], "creating a virtual environment")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)


def ensure_venv(extras=()):
    """Create .venv with the pinned packages (once), then return its python.

    The venv remembers every requirement installed into it, so provision.py, the tests and the
    benchmarks (each asking for a different set) share it without re-running pip.
    """
    reqs = requirements(extras)
    stamp = VENV / ".requirements"
    installed = set(stamp.read_text().splitlines()) if stamp.exists() and VENV_PYTHON.exists() else set()
    if set(reqs) <= installed:
        return VENV_PYTHON
    _make_venv()
    log = VENV / "pip.log"
    with open(log, "w") as out, console.working(
            f"installing {len(reqs)} pinned Python packages into .venv (first run only)", _say, sys.stderr):
        rc = subprocess.run([str(VENV_PYTHON), "-m", "pip", "install", "--disable-pip-version-check",
                             "--progress-bar", "off", *reqs], stdout=out, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise SetupError(f"{tail}\npip could not install the packages; full log in {log}")
    stamp.write_text("\n".join(sorted(installed | set(reqs))) + "\n")
    return VENV_PYTHON


def in_venv():
    return Path(sys.prefix).resolve() == VENV.resolve()


def reexec_in_venv(script, extras=()):
    """Unless already there, re-run `script` with the venv's python."""
    if in_venv() or os.environ.get("APPLIANCE_NO_VENV"):
        return
    python = ensure_venv(extras)
    os.execv(str(python), [str(python), str(script), *sys.argv[1:]])
