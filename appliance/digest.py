"""`up`'s fast path: when nothing changed since the last full run, skip Ansible.

After a full run, the server keeps a record (layout.DIGEST_RECORD, root 0600): a digest of the run's inputs
(every variable the playbooks got, the rendered files' contents, the image's source key (images.source_key),
the playbooks and roles themselves) and what was observed right after it (appliance/server/observe.py) for
everything the roles manage. The next `up` sends its own inputs digest and the same watch list in one SSH
round trip: when the inputs are the same, every observation matches the record and the appliance is healthy,
nothing can be different, and `up` reports changed=0 without running Ansible. Anything else (a hand-edited
file, a stopped service, a removed package, another image, a new option) falls through to the full run,
which repairs it and writes a new record.

What the roles manage is read from the roles themselves (watch_list), so a file a role starts to install
is watched from then on; a task whose module this reader does not know fails tests/test_digest.py.
"""
import hashlib
import json
import os
import shlex
from pathlib import Path

import yaml
from jinja2 import StrictUndefined
from jinja2.nativetypes import NativeEnvironment

from . import layout
from .errors import DeployError
from .ssh import remote

ANSIBLE = Path(__file__).resolve().parent.parent / "ansible"
PLAYBOOKS = ("server.yml", "site.yml")
# modules that only read (their results feed `when:` of the tasks that change things)
READS = {"ansible.builtin.meta", "ansible.builtin.set_fact", "community.docker.docker_container_info",
         "community.docker.docker_network_info", "ansible.builtin.stat", "ansible.builtin.assert"}
ALWAYS = {"community.general.ufw", "community.general.timezone"}  # the firewall and time zone: always observed
COMMANDS = {"ansible.builtin.command", "ansible.builtin.shell"}


class UnknownTask(DeployError):
    pass


def _roles():
    for playbook in PLAYBOOKS:
        for play in yaml.safe_load((ANSIBLE / playbook).read_text()):
            yield from play.get("roles", [])


def _role_vars(role):
    found = {}
    for part in ("defaults", "vars"):
        f = ANSIBLE / "roles" / role / part / "main.yml"
        if f.exists():
            found.update(yaml.safe_load(f.read_text()) or {})
    return found


def _module(task):
    keys = [k for k in task if "." in k]
    return keys[0] if keys else None


class _Reader:
    """Walks every task of the roles and collects what each one manages, with the run's variables."""

    def __init__(self):
        self.env = NativeEnvironment(undefined=StrictUndefined)
        self.env.filters.update(quote=shlex.quote, dirname=os.path.dirname, basename=os.path.basename)
        self.watch = {k: set() for k in ("paths", "packages", "units", "users", "containers", "sysctl")}

    def value(self, expression, scope):
        while isinstance(expression, str) and "{{" in expression:  # (a loop item's field may be an expression)
            expression = self.env.from_string(expression).render(scope)
        return expression

    def tasks(self, tasks, scope, where):
        """where: the role's tasks directory (include_tasks names files there)."""
        for task in tasks or []:
            for part in ("block", "rescue", "always"):
                if part in task:
                    self.tasks(task[part], scope, where)
            if "block" in task:
                continue
            module = _module(task)
            if module in READS or module in ALWAYS:
                continue
            inner = {**scope, **{k: self.value(v, scope) if not isinstance(v, (list, dict)) else v
                                 for k, v in (task.get("vars") or {}).items()}}
            items = self.value(task["loop"], inner) if "loop" in task else [None]
            for item in items:
                self.task(module, task, {**inner, "item": item}, where)

    def task(self, module, task, scope, where):
        args = task.get(module) if module else None
        arg = (lambda name: self.value((args or {}).get(name), scope)) if isinstance(args, dict) else None
        name = f"role {where.parent.name}: {task.get('name', module)!r}"
        if module == "ansible.builtin.include_tasks":
            target = self.value(args if isinstance(args, str) else args.get("file"), scope)
            if target.endswith("/tasks/managed-files.yml"):
                files = self.value(task["vars"]["managed_files"], scope)
                self.watch["paths"].update(self.value(f["path"], scope) for f in files)
            else:
                self.tasks(yaml.safe_load((where / target).read_text()), scope, where)
        elif module == "ansible.builtin.apt":
            names = arg("name")
            self.watch["packages"].update([names] if isinstance(names, str) else names)
        elif module in ("ansible.builtin.file", "ansible.builtin.copy"):
            self.watch["paths"].add(arg("dest") or arg("path"))
        elif module == "ansible.builtin.systemd_service":
            self.watch["units"].add(arg("name"))
        elif module == "ansible.builtin.user":
            self.watch["users"].add(arg("name"))
        elif module == "ansible.posix.authorized_key":
            self.watch["users"].add(arg("user"))  # (a user's observation holds its authorized_keys)
        elif module == "community.docker.docker_container":
            self.watch["containers"].add(arg("name"))
        elif module == "ansible.posix.sysctl":
            self.watch["sysctl"].add(arg("name"))
            self.watch["paths"].add(arg("sysctl_file"))
        elif module == "ansible.posix.mount":
            self.watch["paths"].add("/etc/fstab")
        elif module in COMMANDS:
            self.command(task, args, scope, name)
        else:
            raise UnknownTask(f"{name}: the digest does not know what module {module} manages")

    def command(self, task, args, scope, name):
        """A command either only reads (changed_when: false), names what it makes or removes, or acts on a
        path another task already watches (the swap file)."""
        if task.get("changed_when") is False:
            return
        extra = task.get("args") or {}
        made = [self.value(extra[k], scope) for k in ("creates", "removes") if k in extra]
        if made:
            self.watch["paths"].update(made)
            return
        text = self.value(args if isinstance(args, str) else args.get("cmd", ""), scope)
        if not any(p in text for p in self.watch["paths"] if p):
            raise UnknownTask(f"{name}: a command that changes something the digest does not watch")


def watch_list(variables):
    """{kind: sorted names} of everything the roles of server.yml and site.yml manage, for these variables."""
    reader = _Reader()
    for role in _roles():
        tasks_dir = ANSIBLE / "roles" / role / "tasks"
        scope = {**_role_vars(role), **variables, "playbook_dir": str(ANSIBLE),
                 "base_account": {"home": f"~{variables.get('base_user', '')}"}}  # (registered by the user task)
        reader.tasks(yaml.safe_load((tasks_dir / "main.yml").read_text()), scope, tasks_dir)
    return {k: sorted(str(v) for v in values if v) for k, values in reader.watch.items()}


def inputs(variables, image_key):
    """The digest of everything a full run would get: the variables (rendered files by content, not by their
    temporary path), the image, the playbooks and roles."""
    h = hashlib.sha256()
    plain = {}
    for key, value in variables.items():
        if key.endswith("_files") and isinstance(value, list):
            value = [{**f, "src": hashlib.sha256(Path(f["src"]).read_bytes()).hexdigest()} if "src" in f else f
                     for f in value]
        plain[key] = value
    h.update(json.dumps({"vars": plain, "image": image_key}, sort_keys=True, default=str).encode())
    for f in sorted(p for p in ANSIBLE.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(f.relative_to(ANSIBLE)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def _digest(target, mode, variables, image_key):
    body = json.dumps(watch_list(variables))
    r = remote(target, "digest", mode, layout.DIGEST_RECORD, inputs(variables, image_key), layout.ACME_CONFIG,
               layout.ACME_STATUS, f"{layout.ACME_SERVICE}.timer", input=body, capture_output=True, text=True)
    if r.returncode != 0:
        raise DeployError(f"digest on {target.host} failed: {r.stderr.strip()[-300:]}")
    return json.loads(r.stdout)


def unchanged(target, variables, image_key, say):
    """True when the server is as the last full run left it for these inputs, and healthy."""
    try:
        found = _digest(target, "check", variables, image_key)
    except DeployError as exc:
        say(f"Could not compare the server with the last run ({exc}): running Ansible")
        return False
    if found["same"]:
        say("Nothing changed since the last run and the appliance is healthy: Ansible is not needed")
        return True
    say(f"Running Ansible: {found['why']}")
    return False


def record(target, variables, image_key, say):
    """After a full run: keep its inputs and what the server looks like now (without it the next `up` runs
    Ansible again: nothing worse)."""
    try:
        _digest(target, "record", variables, image_key)
    except DeployError as exc:
        say(f"Could not keep this run's record on the server ({exc}): the next up runs Ansible again")
