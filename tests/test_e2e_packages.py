"""`%pip install` that sticks (issue 17): a package a notebook installs lands in the package directory on the
server, survives the notebook container's restart, and `rebuild --bake` moves it into the image.
"""
from pathlib import Path

import pytest

import jupyter_api
from appliance import layout
from helpers import PASSWORD, URL, in_droplet, provision, wait_jupyter_healthy

pytestmark = [pytest.mark.e2e, pytest.mark.docker]
PACKAGE, VERSION = "pyfiglet", "1.0.4"  # small, pure Python, in neither lock (test_bake.py checks)
SITE = "lib/python3.11/site-packages"


def kernel(appliance, code):
    """Run code in a new kernel through the appliance; its text/plain result."""
    return jupyter_api.execute(URL, appliance["ca"], "ds", PASSWORD, code)


def test_pip_install_in_a_notebook_survives_a_restart_and_bake_moves_it_into_the_image(appliance):
    directory = layout.packages_dir("ds")
    assert in_droplet("stat", "-c", "%U %G %a", directory).split() == [layout.NOTEBOOK_ACCOUNT] * 2 + ["700"]
    # no flag: pip sees the image's site-packages are read-only and installs into the user base
    assert kernel(appliance, f"%pip install -q {PACKAGE}=={VERSION}\n'done'") == "'done'"
    where = kernel(appliance, f"import {PACKAGE}; {PACKAGE}.__file__").strip("'")
    assert where == f"{layout.IMAGE_USER_PACKAGES}/{SITE}/{PACKAGE}/__init__.py"
    assert in_droplet("stat", "-c", "%U", f"{directory}/{SITE}/{PACKAGE}/__init__.py").strip() == \
        layout.NOTEBOOK_ACCOUNT
    # another version of a package the image ships is refused: Jupyter's own packages stay the image's
    refused = kernel(appliance, "import subprocess, sys; r = subprocess.run([sys.executable, '-m', 'pip', 'install', "
                                "'numpy==2.3.5'], capture_output=True, text=True); "
                                "(r.returncode != 0, 'lack sys.path precedence to numpy' in r.stderr)")
    assert refused == "(True, True)"

    in_droplet("docker", "restart", layout.CONTAINER)
    wait_jupyter_healthy()
    assert kernel(appliance, f"import {PACKAGE}; {PACKAGE}.__version__") == f"'{VERSION}'"

    r, _ = provision("rebuild", "--bake", env=appliance["env"])
    assert r.returncode == 0, r.stdout[-4000:]
    assert f"Installed by notebooks: {PACKAGE}=={VERSION}" in r.stdout
    assert f"Baked into the image: {PACKAGE}=={VERSION}; removed from {directory}: {PACKAGE}=={VERSION}" in r.stdout
    assert f"{PACKAGE}=={VERSION}" in (Path(appliance["state"]) / "local" / "packages").read_text().split()
    r, _ = provision("images", "--image", "scipy", env=appliance["env"])
    assert f"  {PACKAGE}=={VERSION}\n" in r.stdout
    assert PACKAGE not in in_droplet("ls", f"{directory}/{SITE}")  # the directory keeps its layout, empty
    where = kernel(appliance, f"import {PACKAGE}; {PACKAGE}.__file__").strip("'")
    assert where == f"/opt/venv/{SITE}/{PACKAGE}/__init__.py"
    r, _ = provision("up", env=appliance["env"])  # the baked package is remembered
    assert r.returncode == 0 and "changed=0" in r.stdout, r.stdout[-3000:]
