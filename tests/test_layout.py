"""The server layout (appliance/layout.py) and the one managed-files drift check the roles share."""
import importlib.util
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from appliance import config, deploy, layout, render

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("managed_files", ROOT / "ansible/filter_plugins/managed_files.py")
managed_files = importlib.util.module_from_spec(spec)
spec.loader.exec_module(managed_files)


def _check_script(paths):
    """The server's check from ansible/tasks/managed-files.yml, for these paths."""
    task = yaml.safe_load((ROOT / "ansible/tasks/managed-files.yml").read_text())[0]
    script = task["ansible.builtin.shell"]
    loop = "{{ managed_files | map(attribute='path') | map('quote') | join(' ') }}"
    assert loop in script
    return script.replace(loop, " ".join(f"'{p}'" for p in paths))


def test_drift_check_matches_what_the_server_prints(tmp_path):
    cfg = config.load({"host": "192.0.2.1", "state_dir": str(tmp_path / "state")}, env={})
    state, _, _ = render.prepare(cfg, interactive=False,
                                 env={"APPLIANCE_PASSWORD": "a long test password"})
    files = render.render(cfg, state, tmp_path / "out")
    items = [f for role in render.role_files(files, tmp_path / "out").values() for f in role]
    items.append({"path": str(tmp_path / "content.txt"), "mode": "0440", "group": "root", "content": "x ünï\n"})
    installed = tmp_path / "server"
    for item in items:  # "install" each where the check will look, as Ansible would
        item["path"] = str(installed / item["path"].lstrip("/"))
        target = Path(item["path"])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(Path(item["src"]).read_bytes() if "src" in item else item["content"].encode())
        target.chmod(int(item["mode"], 8))
        item["group"] = Path(target).group()
    lines = subprocess.run(["sh", "-c", _check_script(i["path"] for i in items)], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert managed_files.managed_files_pending(items, lines) == []
    Path(items[0]["path"]).chmod(0o600)  # drift: a mode, a content
    Path(items[1]["path"]).write_text("changed")
    lines = subprocess.run(["sh", "-c", _check_script(i["path"] for i in items)], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert [i["path"] for i in managed_files.managed_files_pending(items, lines)] == [items[0]["path"],
                                                                                    items[1]["path"]]


@pytest.mark.parametrize("tls", ["private", "acme"])
def test_every_rendered_file_has_a_role_and_a_known_service(tmp_path, tls):
    cfg = config.load({"host": "192.0.2.1", "state_dir": str(tmp_path / "state"), "domain": "nb.example.org",
                       "tls": tls}, env={})
    state, _, _ = render.prepare(cfg, interactive=False,
                                 env={"APPLIANCE_PASSWORD": "a long test password"})
    files = render.render(cfg, state, tmp_path / "out")
    services = {layout.NGINX: "web", layout.AUTH_SERVICE: "web", layout.CONTAINER: "jupyter",
                layout.ACME_SERVICE: "web", layout.SESSION_SERVICE: "web"}
    for f in files:
        assert f.service == "" or services[f.service] == f.role, f
    by_path = {f.path: f for f in files}
    assert by_path[layout.HTPASSWD].service == "" and by_path[layout.CA_CERT].service == ""  # nothing restarts


def test_role_vars_are_what_the_roles_declare():
    declared = set()
    for specs in (ROOT / "ansible/roles").glob("*/meta/argument_specs.yml"):
        declared |= set(yaml.safe_load(specs.read_text())["argument_specs"]["main"]["options"])
    assert set(layout.role_vars("ds")) <= declared
    assert set(deploy.role_inputs(config.load({"host": "192.0.2.1"}, env={}))) <= declared
    assert {"web_files", "jupyter_files"} <= declared


def test_the_acme_settings_name_what_the_web_role_uses():
    """The script's settings file and the role agree on the paths (both come from layout.py)."""
    roles = layout.role_vars("ds")
    assert (roles["web_tls_cert"], roles["web_tls_key"], roles["web_tls_key_mode"]) == \
        (layout.TLS_CERT, layout.TLS_KEY, "0600")
    assert roles["web_acme_dirs"] == [layout.VAR, layout.ACME_WEBROOT]
    assert layout.ACME_WEBROOT.startswith(layout.VAR + "/") and layout.ACME_STATUS.startswith(layout.VAR + "/")
    tasks = (ROOT / "ansible/roles/web/tasks/acme.yml").read_text()
    assert "obtain {{ web_acme_config }}" in tasks and "flush_handlers" in tasks
    main = yaml.safe_load((ROOT / "ansible/roles/web/tasks/main.yml").read_text())
    removal = next(t for t in main if "remove" in str(t.get("ansible.builtin.command", "")))
    assert removal["args"]["removes"] == "{{ web_acme_config }}" and removal["when"] == "web_tls == 'private'"


def test_image_makes_the_layouts_directories():
    dockerfile = (ROOT / "images/base/Dockerfile").read_text()
    assert re.search(rf"mkdir -p .*{re.escape(layout.IMAGE_SOCKET_DIR)}\b", dockerfile)
    user = re.search(r"^ARG NB_USER=(\S+)$", dockerfile, re.M)[1]
    assert layout.IMAGE_NOTEBOOKS == f"/home/{user}/notebooks"


def test_secret_files_modes(tmp_path):
    cfg = config.load({"host": "192.0.2.1", "state_dir": str(tmp_path / "state")}, env={})
    state, _, _ = render.prepare(cfg, interactive=False, env={"APPLIANCE_PASSWORD": "a long test password"})
    by_path = {f.path: f for f in render.render(cfg, state, tmp_path / "out")}
    assert (by_path[layout.TLS_KEY].mode, by_path[layout.TLS_KEY].group) == ("0600", "root")  # nginx's master
    assert (by_path[layout.HTPASSWD].mode, by_path[layout.HTPASSWD].group) == ("0640", layout.WEB_GROUP)  # authd
    tls_dir = next(d for d in layout.role_vars("ds")["web_dirs"] if d["path"] == layout.TLS_DIR)
    assert tls_dir["group"] == "root"


UFW_HEAD = ("Status: active\nDefault: deny (incoming), allow (outgoing), deny (routed)\n\n"
            "To                         Action      From\n--                         ------      ----\n")


def _allow_task_runs(ports, status):
    """Whether the hardening role's allow task runs for these ports and this `ufw status verbose`, evaluated by
    Ansible's own templating (nothing is applied to this machine)."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar, trust_as_template
    tasks = yaml.safe_load((ROOT / "ansible/roles/hardening/tasks/main.yml").read_text())
    task = next(t for t in tasks if t.get("community.general.ufw", {}).get("rule") == "allow")
    assert task["loop"] == "{{ hardening_allowed_tcp }}" and task["community.general.ufw"]["port"] == "{{ item }}"
    templar = Templar(loader=DataLoader(), variables={"hardening_allowed_tcp": ports,
                                                      "hardening_ufw": {"stdout_lines": status.splitlines()}})
    return templar.template(trust_as_template("{{ " + task["when"] + " }}"))


@pytest.mark.parametrize("flags, ports", [
    ({"host": "192.0.2.1", "ssh_port": 2200}, [80, 443, 2200]),
    ({"host": "192.0.2.1", "ssh_port": 2200, "http_port": 8080, "https_port": 8443}, [2200, 8080, 8443]),
    ({"host": "local"}, [22, 80, 443]),  # inside the droplet; 127.0.0.1:2222 is Docker's publish here
])
def test_firewall_opens_the_configured_ports(flags, ports, tmp_path):
    cfg = config.load({**flags, "state_dir": str(tmp_path)}, env={})
    extravars = deploy.role_inputs(cfg)
    assert extravars["hardening_allowed_tcp"] == ports
    allowed = "".join(f"{p}/tcp                    ALLOW IN    Anywhere\n" for p in (22, 80, 443))
    assert _allow_task_runs(ports, "Status: inactive\n")  # a fresh server
    assert _allow_task_runs(ports, UFW_HEAD + allowed) == (ports != [22, 80, 443])  # 22/80/443 open, 2200 not
    opened = "".join(f"{p}/tcp                    ALLOW IN    Anywhere\n" for p in ports)
    assert not _allow_task_runs(ports, UFW_HEAD + opened)  # all there: nothing to do


def test_image_keeps_what_notebooks_install_away_from_root_and_jupyter_server():
    """The kernels' user base is the layout's; every Python the image starts as root, or as Jupyter Server,
    skips the user site (-s), so what a notebook installed never runs there (docs/images.md)."""
    dockerfile = (ROOT / "images/base/Dockerfile").read_text()
    assert "ARG APPLIANCE_USER_PACKAGES\n" in dockerfile
    assert "PYTHONUSERBASE=${APPLIANCE_USER_PACKAGES}" in dockerfile
    assert re.search(r"mkdir -p .*\"\$\{APPLIANCE_USER_PACKAGES\}\"", dockerfile)
    assert "python3 -m venv --system-site-packages /opt/venv" in dockerfile
    assert layout.IMAGE_USER_PACKAGES.startswith("/opt/venv/")  # under sys.prefix: pip upgrades and uninstalls it
    assert 'ENTRYPOINT ["/opt/venv/bin/python", "-s", ' in dockerfile
    assert 'CMD ["/opt/venv/bin/python", "-s", "/opt/appliance/healthcheck.py"]' in dockerfile
    for name in ("base", "scipy"):
        text = (ROOT / f"images/{name}/Dockerfile").read_text()
        runs = re.findall(r"\bpython (?!-s)\S+", text.replace("python3 -m venv", ""))
        assert runs == [], (name, runs)
    start = (ROOT / "images/base/start.py").read_text()
    assert '[sys.executable, "-s", __file__, SERVE]' in start
    images = (ROOT / "appliance/images.py").read_text()
    assert 'args["APPLIANCE_USER_PACKAGES"] = layout.IMAGE_USER_PACKAGES' in images


def test_the_package_directory_is_the_notebook_accounts_alone():
    role = layout.role_vars("ds")
    assert role["jupyter_packages_dir"] == "/home/ds/notebook-packages"
    assert role["jupyter_packages_dir"] != role["jupyter_notebooks_dir"]
    assert role["jupyter_packages_mode"] == "0700"
    assert role["jupyter_image_packages"] == layout.IMAGE_USER_PACKAGES
    tasks = yaml.safe_load((ROOT / "ansible/roles/jupyter/tasks/main.yml").read_text())
    made = [t["ansible.builtin.file"] for t in tasks if t.get("ansible.builtin.file", {}).get("path")
            == "{{ jupyter_packages_dir }}"]
    assert made == [{"path": "{{ jupyter_packages_dir }}", "state": "directory", "owner": "{{ jupyter_account }}",
                     "group": "{{ jupyter_account }}", "mode": "{{ jupyter_packages_mode }}"}]
    run = next(t for t in tasks if "community.docker.docker_container" in t)
    assert run["community.docker.docker_container"]["mounts"] == "{{ jupyter_mounts + jupyter_dask_mounts }}"
    assert {"type": "bind", "source": "{{ jupyter_packages_dir }}",
            "target": "{{ jupyter_image_packages }}"} in run["vars"]["jupyter_mounts"]


def _templated(expression, variables):
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar, trust_as_template
    return Templar(loader=DataLoader(), variables=variables).template(trust_as_template(expression))


WEB_PACKAGES = ["nginx", "python3-bcrypt"]


@pytest.mark.parametrize("tls, packages", [("private", WEB_PACKAGES), ("acme", WEB_PACKAGES + ["certbot"])])
def test_certbot_comes_only_with_acme(tls, packages):
    tasks = yaml.safe_load((ROOT / "ansible/roles/web/tasks/main.yml").read_text())
    apt = next(t["ansible.builtin.apt"] for t in tasks if "ansible.builtin.apt" in t)
    assert _templated(apt["name"], {"web_tls": tls}) == packages


@pytest.mark.parametrize("registered, changed", [
    ({"rc": 0, "stdout": '{"changed": true, "ok": true, "result": "issued"}'}, True),
    ({"rc": 0, "stdout": '{"changed": false, "ok": true, "result": "kept"}'}, False),
    ({"rc": 0, "stdout": '{"changed": false, "ok": false, "result": "failed"}'}, False),
    ({"rc": 1, "stdout": ""}, False),  # the script's own error: the task fails, with its message, not a JSON error
])
def test_obtain_is_changed_only_when_nginx_got_another_certificate(registered, changed):
    tasks = yaml.safe_load((ROOT / "ansible/roles/web/tasks/acme.yml").read_text())
    task = next(t for t in tasks if "obtain" in str(t.get("ansible.builtin.command", "")))
    assert _templated("{{ " + task["changed_when"] + " }}", {"web_acme_obtained": registered}) is changed


def test_the_web_role_makes_the_session_key_once_and_privately(tmp_path):
    """The role's own script (templated by Ansible) run here: 32 random bytes, root:www-data 0640 from the
    start (umask, then a rename), and Ansible runs it only while there is no key (`creates`)."""
    tasks = yaml.safe_load((ROOT / "ansible/roles/web/tasks/main.yml").read_text())
    task = next(t for t in tasks if "session" in t["name"] and "ansible.builtin.shell" in t)
    assert task["args"] == {"creates": "{{ web_session_key }}"}
    roles = layout.role_vars("ds")
    assert (roles["web_session_key"], roles["web_session_key_mode"]) == (layout.SESSION_KEY, layout.SECRET_MODE)
    key = tmp_path / "session key"  # a space: the script quotes it
    script = _templated(task["ansible.builtin.shell"], {**roles, "web_session_key": str(key)})
    keys = set()
    for _ in range(2):
        subprocess.run(["sh", "-c", script], check=True)
        stat = key.stat()
        assert (stat.st_size, oct(stat.st_mode & 0o777), key.group()) == (32, "0o640", layout.WEB_GROUP)
        keys.add(key.read_bytes())
    assert len(keys) == 2 and list(tmp_path.iterdir()) == [key]  # random; no temporary file left
    keeper = next(t for t in tasks if "ansible.builtin.file" in t and "session" in t["name"])
    assert keeper["ansible.builtin.file"] == {"path": "{{ web_session_key }}", "owner": "root",
                                              "group": "{{ web_group }}", "mode": "{{ web_session_key_mode }}"}
