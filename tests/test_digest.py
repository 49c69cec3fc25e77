"""`up`'s fast path (appliance/digest.py, appliance/server/observe.py): what the roles manage is read from
the roles, every task is understood, and the record/check pair sees each kind of drift. The end-to-end
side (a real server, real drift, Ansible repairing it) is in test_e2e_day2.py."""
import io
import json
import shutil
import sys

import pytest
import yaml

from appliance import config, deploy, digest, layout, render
from appliance.server import remote

PASSWORD = {"APPLIANCE_PASSWORD": "a long test password"}


def site_vars(tmp_path, tls="private"):
    cfg = config.load({"host": "192.0.2.1", "state_dir": str(tmp_path / "state"), "domain": "nb.example.org",
                       "tls": tls}, env={})
    state, _, _ = render.prepare(cfg, interactive=False, env=PASSWORD)
    base = {**deploy.role_inputs(cfg), "base_ssh_pubkey": "ssh-ed25519 AAAA test", "base_timezone": "UTC",
            "base_swap_mb": 0, "jupyter_image_tag": "appliance/scipy:latest", "jupyter_memory": "0", "jupyter_cpus": 0}
    return deploy.appliance_vars(cfg, state, base, tmp_path / "render", None, [], "appliance/scipy:latest")


@pytest.mark.parametrize("tls", ["private", "acme"])
def test_everything_the_roles_manage_is_watched(tmp_path, tls):
    variables = site_vars(tmp_path, tls)
    watch = digest.watch_list(variables)
    rendered = {f["path"] for key in ("web_files", "jupyter_files") for f in variables[key]}
    assert rendered <= set(watch["paths"])  # the site, htpasswd, keys, units, the verifier ...
    assert {layout.SSHD_DROPIN, layout.AUTO_UPGRADES, "/etc/docker/daemon.json", "/etc/sudoers.d/90-ds",
            layout.notebooks_dir("ds"), layout.packages_dir("ds"), "/etc/nginx/sites-enabled/default"} <= set(watch["paths"])
    assert {"nginx", "docker.io", "ufw", "unattended-upgrades", "python3-bcrypt"} <= set(watch["packages"])
    assert ("certbot" in watch["packages"]) == (tls == "acme")
    assert {"nginx", "docker", "appliance-auth.socket"} <= set(watch["units"])
    assert watch["users"] == ["ds", layout.NOTEBOOK_ACCOUNT] and layout.CONTAINER in watch["containers"]


@pytest.fixture
def roles(tmp_path, monkeypatch):
    """A copy of ansible/ the digest reads instead of the real one."""
    copy = tmp_path / "ansible"
    shutil.copytree(digest.ANSIBLE, copy)
    monkeypatch.setattr(digest, "ANSIBLE", copy)
    return copy


def _add_task(roles, role, task):
    path = roles / "roles" / role / "tasks" / "main.yml"
    path.write_text(path.read_text() + "\n" + yaml.safe_dump([task]))


def test_a_file_a_role_starts_to_install_is_watched_from_then_on(tmp_path, roles):
    _add_task(roles, "web", {"name": "A new file", "ansible.builtin.include_tasks": "{{ playbook_dir }}/tasks/managed-files.yml",
                             "vars": {"managed_files": [{"path": "/etc/new-{{ base_user }}.conf", "mode": "0644",
                                                         "group": "root", "service": "", "content": "x"}]}})
    _add_task(roles, "hardening", {"name": "A new package", "ansible.builtin.apt": {"name": ["fail2ban"]}})
    watch = digest.watch_list(site_vars(tmp_path))
    assert "/etc/new-ds.conf" in watch["paths"] and "fail2ban" in watch["packages"]


@pytest.mark.parametrize("task", [
    {"name": "Edit a line", "ansible.builtin.lineinfile": {"path": "/etc/x", "line": "y"}},
    {"name": "Run something", "ansible.builtin.command": "touch /etc/somewhere-else"},
])
def test_a_task_the_digest_cannot_read_fails(tmp_path, roles, task):
    """A module the reader does not know, or a command changing something nothing watches, is an error (so
    this test fails the day a role gets one, until the digest learns it)."""
    _add_task(roles, "jupyter", task)
    with pytest.raises(digest.UnknownTask, match=task["name"]):
        digest.watch_list(site_vars(tmp_path))


def test_the_inputs_digest_changes_with_any_input_and_not_with_the_render_directory(tmp_path):
    variables = site_vars(tmp_path)
    first = digest.inputs(variables, "sha256:1")
    again = site_vars(tmp_path / "another")  # (a new state: a new CA and password; same shape)
    assert digest.inputs(variables, "sha256:1") == first
    assert digest.inputs(variables, "sha256:2") != first  # another image
    assert digest.inputs({**variables, "jupyter_memory": "4g"}, "sha256:1") != first
    site = next(f for f in variables["web_files"] if f["path"] == layout.NGINX_SITE)
    moved = tmp_path / "moved.conf"
    shutil.copy(site["src"], moved)
    same_place = [{**f, "src": str(moved)} if f is site else f for f in variables["web_files"]]
    assert digest.inputs({**variables, "web_files": same_place}, "sha256:1") == first  # only the content counts
    moved.write_text(moved.read_text() + "# edited\n")
    assert digest.inputs({**variables, "web_files": same_place}, "sha256:1") != first
    assert digest.inputs(again, "sha256:1") != first


def test_the_inputs_digest_covers_the_roles(tmp_path, roles):
    variables = site_vars(tmp_path)
    first = digest.inputs(variables, "sha256:1")
    handlers = roles / "roles" / "web" / "handlers" / "main.yml"
    handlers.write_text(handlers.read_text() + "\n# changed\n")
    assert digest.inputs(variables, "sha256:1") != first


def _digest(monkeypatch, capsys, mode, record, inputs, watch, https="login required"):
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(watch)))
    monkeypatch.setattr(remote, "_https_answers", lambda: https)
    monkeypatch.setattr(remote, "_replace", lambda path, data, mode, group: path.write_bytes(data))
    remote.digest(mode, record, inputs, str(record.parent / "acme.json"), str(record.parent / "acme-status.json"),
                  "appliance-certbot.timer")
    return json.loads(capsys.readouterr().out)


def test_the_check_sees_each_kind_of_drift(tmp_path, monkeypatch, capsys):
    site, key, directory = tmp_path / "site.conf", tmp_path / "server.key", tmp_path / "dir"
    site.write_text("server {}\n")
    key.write_text("key")
    key.chmod(0o600)
    directory.mkdir(mode=0o755)
    watch = {"paths": [str(site), str(key), str(directory), str(tmp_path / "absent")], "users": ["root"],
             "sysctl": ["vm.swappiness"]}
    record = tmp_path / "record.json"
    check = lambda inputs="in-1", **kw: _digest(monkeypatch, capsys, "check", record, inputs, watch, **kw)  # noqa: E731

    assert check() == {"same": False, "why": "no record of a full run on this server"}
    _digest(monkeypatch, capsys, "record", record, "in-1", watch)
    assert "server {}" not in record.read_text()  # fingerprints only, no content
    assert check() == {"same": True, "why": ""}
    assert "settings, files, image or roles differ" in check("in-2")["why"]
    assert "not healthy" in check(https="no answer")["why"]
    # with --tls acme: after a failed certificate attempt the same `up` runs in full (and asks the CA again)
    (tmp_path / "acme.json").write_text(json.dumps({"domain": "nb.example.org", "directory": "https://ca/dir"}))
    monkeypatch.setattr(remote, "_run", lambda *cmd: "active")
    for ok, same in ((True, True), (False, False)):
        (tmp_path / "acme-status.json").write_text(json.dumps({"attempts": [{"ok": ok, "result": "x"}]}))
        found = check()
        assert found["same"] is same and ("ACME" in found["why"]) is not same, found
    (tmp_path / "acme.json").unlink()
    for drift, undo in [
            (lambda: site.write_text("server { listen 80; }\n"), lambda: site.write_text("server {}\n")),
            (lambda: key.chmod(0o644), lambda: key.chmod(0o600)),
            (lambda: directory.chmod(0o777), lambda: directory.chmod(0o755)),
            (lambda: (tmp_path / "absent").write_text("x"), lambda: (tmp_path / "absent").unlink()),
            (lambda: site.unlink(), lambda: site.write_text("server {}\n"))]:
        drift()
        found = check()
        assert found["same"] is False and "the server differs from the last run" in found["why"], found
        undo()
        assert check()["same"] is True
