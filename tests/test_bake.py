"""`rebuild --bake`: what notebooks installed with `%pip install` moves into the image's last layer.

The server side (remote.py `user_packages`, `forget_user_packages`) runs here as the server runs it
(`python3 -c` with remote.py's source, as root), on a user base laid out the way pip lays it out; it reads
and deletes as the notebook account (here `nobody`), never as root.
"""
import json
import os
import pwd
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from appliance import ops, server
from appliance.errors import DeployError
from appliance.state import State

SITE = "lib/python3.11/site-packages"
ACCOUNT = "nobody"


def remote(*args, stdin=""):
    return subprocess.run([sys.executable, "-c", server.remote_source(), *args], input=stdin, text=True,
                          capture_output=True)


def dist(base, name, version, files, direct=False, record_extra=()):
    """A distribution as pip installs it: files (relative to site-packages), METADATA, RECORD listing all."""
    site = base / SITE
    info = f"{name.replace('-', '_')}-{version}.dist-info"
    (site / info).mkdir(parents=True)
    (site / info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nText\n")
    (site / info / "INSTALLER").write_text("pip\n")
    if direct:
        (site / info / "direct_url.json").write_text('{"url": "file:///tmp/x"}')
    listed = [*files, f"{info}/METADATA", f"{info}/INSTALLER", f"{info}/RECORD", *record_extra]
    for rel in files:
        path = (site / rel).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    (site / info / "RECORD").write_text("".join(f"{rel},,\n" for rel in listed))


@pytest.fixture
def user_base():
    """A user base owned by the account, in a directory it can reach (pytest's own tmp is root's 0700)."""
    if os.geteuid() != 0:
        pytest.skip("reads and deletes as another account: needs root, as on the server")
    top = Path(tempfile.mkdtemp(prefix="bake-", dir="/tmp"))
    top.chmod(0o755)
    base = top / "notebook-packages"
    dist(base, "alpha", "1.0", ["alpha/__init__.py", "alpha/__pycache__/__init__.cpython-311.pyc",
                                 "alpha/sub/mod.py", "../../../bin/alpha", "alpha.pth"],
         record_extra=["../../../../outside.txt"])
    dist(base, "Beta_Pkg", "2.0", ["beta_pkg.py"], direct=True)
    dist(base, "gamma", "3.0", ["gamma/__init__.py", "../../../bin/gamma"])
    (top / "outside.txt").write_text("not the package directory's")
    planted = base / SITE / "evil-6.6.6.dist-info"
    planted.mkdir()
    (planted / "METADATA").symlink_to("/etc/shadow")  # root could read it; the account cannot
    account = pwd.getpwnam(ACCOUNT)
    for path in [base, *base.rglob("*")]:
        os.chown(path, account.pw_uid, account.pw_gid, follow_symlinks=False)
    (top / "outside.txt").chmod(0o666)  # even a file the account could delete stays: it is outside
    yield base
    subprocess.run(["rm", "-rf", str(top)], check=True)


def test_the_server_lists_what_notebooks_installed_as_the_notebook_account(user_base):
    r = remote("user_packages", str(user_base), ACCOUNT)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [{"name": "Beta_Pkg", "version": "2.0", "direct": True},
                                    {"name": "alpha", "version": "1.0", "direct": False},
                                    {"name": "gamma", "version": "3.0", "direct": False}]
    assert json.loads(remote("user_packages", str(user_base / "missing"), ACCOUNT).stdout) == []


def test_the_server_forgets_only_the_baked_versions_file_by_file(user_base):
    site = user_base / SITE
    r = remote("forget_user_packages", str(user_base), ACCOUNT, stdin=json.dumps([["ALPHA", "1.0"], ["gamma", "9"]]))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == ["alpha==1.0"]
    assert not (site / "alpha").exists() and not (site / "alpha-1.0.dist-info").exists()
    assert not (site / "alpha.pth").exists() and not (user_base / "bin/alpha").exists()
    assert (site / "gamma/__init__.py").exists() and (user_base / "bin/gamma").exists()  # another version was asked
    assert (site / "beta_pkg.py").exists() and site.is_dir()
    assert (user_base.parent / "outside.txt").read_text() == "not the package directory's"
    assert Path("/etc/shadow").exists()


def test_a_server_without_the_account_is_a_clear_error(user_base):
    r = remote("user_packages", str(user_base), "no-such-account-here")
    assert r.returncode != 0 and r.stderr.strip() == "the server has no account no-such-account-here: run `up` first"


def test_bakeable_takes_only_index_packages_with_a_clean_name():
    found = [{"name": "tabulate", "version": "0.10.0", "direct": False},
             {"name": "PyFiglet", "version": "1.0.4", "direct": False}]
    assert ops.bakeable(found) == ("PyFiglet==1.0.4", "tabulate==0.10.0")
    with pytest.raises(DeployError, match=r"^mine came from a URL or a local path.*nothing was changed$"):
        ops.bakeable([*found, {"name": "mine", "version": "0.1", "direct": True}])
    for name, version in (("numpy; rm -rf /", "1"), ("x", "1 2"), ("$(reboot)", "1"), ("", "1"), ("x", "")):
        with pytest.raises(DeployError, match="not NAME==VERSION; nothing was changed"):
            ops.bakeable([{"name": name, "version": version, "direct": False}])


def test_rebuild_bake_builds_with_them_then_forgets_them_after_the_rollout(tmp_path, monkeypatch):
    from appliance import config
    cfg = config.load({"host": "192.0.2.1", "state_dir": str(tmp_path / "state")}, env={})
    state = State(cfg.target_dir).ensure()
    state.set_packages(("tabulate==0.9.0", "rich==13.0.0"))
    calls = []
    monkeypatch.setattr(ops, "_user_packages", lambda cfg, say: ("pyfiglet==1.0.4", "tabulate==0.10.0"))
    monkeypatch.setattr(ops.images, "build", lambda image, packages, **kw: calls.append(("build", packages)))
    monkeypatch.setattr(ops.deploy, "up", lambda cfg, **kw: calls.append(("up", state.packages())) or 3)
    monkeypatch.setattr(ops, "_forget_user_packages",
                        lambda cfg, baked, say: calls.append(("forget", baked)) or list(baked))
    said = []
    assert ops.rebuild(cfg, packages=("rich==14.0.0",), bake=True, say=said.append) == 3
    wanted = ("pyfiglet==1.0.4", "rich==14.0.0", "tabulate==0.10.0")  # baked replaces, --package wins
    assert calls == [("build", wanted), ("up", wanted), ("forget", ("pyfiglet==1.0.4", "tabulate==0.10.0"))]
    assert state.packages() == wanted
    assert any(line.startswith("Baked into the image: pyfiglet==1.0.4, tabulate==0.10.0") for line in said)


def test_a_failed_build_bakes_and_forgets_nothing(tmp_path, monkeypatch):
    from appliance import config
    cfg = config.load({"host": "192.0.2.1", "state_dir": str(tmp_path / "state")}, env={})
    state = State(cfg.target_dir).ensure()

    def fail(*args, **kwargs):
        raise ops.images.ImageError("building scipy failed: no such version")

    monkeypatch.setattr(ops, "_user_packages", lambda cfg, say: ("pyfiglet==1.0.4",))
    monkeypatch.setattr(ops.images, "build", fail)
    monkeypatch.setattr(ops, "_forget_user_packages", lambda *a: pytest.fail("forgot after a failed build"))
    with pytest.raises(ops.images.ImageError):
        ops.rebuild(cfg, bake=True, say=lambda m: None)
    assert state.packages() == ()


def test_the_package_the_end_to_end_test_installs_is_in_no_lock():
    """test_e2e_packages.py installs pyfiglet with %pip: it must not already be in the image."""
    from appliance import images
    for name in ("base", "scipy"):
        assert "\npyfiglet==" not in (images.IMAGES / name / "requirements.lock").read_text()
