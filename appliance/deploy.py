"""`up`: turn a server (or the local droplet) into the appliance over SSH.

Steps: reach the server, prepare the local state (CA, certificate, htpasswd),
render the server's files into a private temporary directory, make sure the
notebook image is on the server (built here, streamed over SSH only when the
server lacks that exact image), then run the Ansible playbook through
ansible-runner with a live progress display.
"""
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

import ansible_runner

from . import bootstrap, console, images, layout, render, server, tls
from .errors import DeployError
from .server.archive import chain_ids

ANSIBLE = Path(__file__).resolve().parent.parent / "ansible"
DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")
LOGIN = "ssh_login"  # state file: the user SSH logs in as once the server is hardened
PACKAGES = "packages"  # state file: extra Python packages of the image (`rebuild --package`), one per line
FIRST_RUN = ("First run for this server: expect about 5 minutes (on a fresh machine it also makes the base "
             "images and builds the notebook image); later runs take under a minute.")


class Target:
    """How to reach one server over SSH."""

    def __init__(self, host, port, user, key, known_hosts, control_dir):
        self.host, self.port, self.user, self.key = host, port, user, key
        self.known_hosts, self.control_dir = known_hosts, control_dir

    def ssh_options(self):
        opts = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=15", "-o", "ServerAliveInterval=15",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=accept-new",
                "-o", "ControlMaster=auto", "-o", "ControlPersist=60s",
                "-o", f"ControlPath={self.control_dir}/%C"]
        if self.key:
            opts += ["-o", "IdentitiesOnly=yes", "-i", self.key]
        return opts

    def argv(self, command):
        """The ssh command line running command on the server (a fixed string, never a secret)."""
        return ["ssh", *self.ssh_options(), "-p", str(self.port), f"{self.user}@{self.host}", command]

    def ssh(self, command, **kwargs):
        return subprocess.run(self.argv(command), **kwargs)

    def close(self):
        """End the shared SSH connection (its socket lives in a directory about to go)."""
        subprocess.run(["ssh", *self.ssh_options(), "-p", str(self.port), "-O", "exit",
                        f"{self.user}@{self.host}"], capture_output=True)

    def sudo(self, command):
        return command if self.user == "root" else f"sudo -n {command}"


def _public_key(key_path):
    if key_path is None:
        for name in DEFAULT_KEYS:
            candidate = Path.home() / ".ssh" / name
            if candidate.is_file():
                key_path = str(candidate)
                break
        else:
            raise DeployError("no SSH key: pass --ssh-key PATH (or create ~/.ssh/id_ed25519)")
    r = subprocess.run(["ssh-keygen", "-y", "-f", key_path], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise DeployError(f"cannot read the SSH key {key_path} (is it a private key without a passphrase?)")
    return key_path, r.stdout.strip()


def last_line(text, default="no message"):
    """The last non-empty line of a command's error output: what a one-line error shows."""
    lines = text.strip().splitlines()
    return lines[-1] if lines else default


def check_reachable(target):
    """A clear one-line error for the usual ways SSH fails."""
    r = target.ssh("true", capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    if r.returncode == 0:
        return
    err = last_line(r.stderr)
    where = f"{target.user}@{target.host}:{target.port}"
    if "Could not resolve" in err or "Name or service not known" in err:
        raise DeployError(f"the host {target.host} does not resolve")
    if "Connection refused" in err:
        raise DeployError(f"{where} refuses SSH connections (is sshd running, is the port right?)")
    if "Permission denied" in err:
        raise DeployError(f"{where} refused the SSH key {target.key or '(default keys)'}")
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in r.stderr:
        raise DeployError(f"the SSH host key of {target.host} changed since the last run; if the server was "
                          f"rebuilt, remove its line from {target.known_hosts}")
    raise DeployError(f"cannot reach {where} over SSH: {err}")


def operator_login(target, user, state):
    """Switch to the operator user once its key login and sudo are proven to work.

    Only then may site.yml turn root and password logins off: the operator can
    never be locked out. Later runs log in as that user (kept in the state).
    """
    if target.user == user:
        return target
    operator = Target(target.host, target.port, user, target.key, target.known_hosts, target.control_dir)
    r = operator.ssh("sudo -n true", capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    if r.returncode != 0:
        raise DeployError(f"cannot log in as {user} with sudo after creating it ({r.stderr.strip()[-200:]}); "
                          "SSH was left as it was")
    state.write(LOGIN, user)
    return operator


def remote_command(*args):
    """The shell command running one command of remote.py (its source goes over SSH, nothing stays)."""
    return " ".join(shlex.quote(a) for a in ("python3", "-c", server.remote_source(), *args))


def remote(target, *args, **kwargs):
    """Run one command of remote.py on the server as root."""
    return target.ssh(target.sudo(remote_command(*args)), **kwargs)


def remote_json(target, *args):
    r = remote(target, *args, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise DeployError(f"{args[0]} on {target.host} failed: {last_line(r.stderr)}")
    return json.loads(r.stdout)


notebooks_dir = layout.notebooks_dir
server_paths = layout.server_paths


def check_disk(target, user):
    """Refuse to start when the server is nearly out of space: better than a half-written config."""
    for disk in remote_json(target, "disks", *server_paths(user)):
        if disk["low"]:
            raise DeployError(f"the server is nearly out of disk space: {disk['path']} has "
                              f"{disk['free'] / 1e6:.0f} MB free of {disk['size'] / 1e6:.0f} MB; free some "
                              "space (e.g. `docker image prune` there) and run again")


class _GzipPipe:
    """A write-only file that gzips into a process's stdin and counts the bytes sent (shown by ticker)."""

    def __init__(self, stdin, ticker):
        self.stdin, self.gzip, self.sent, self.ticker = stdin, zlib.compressobj(1, zlib.DEFLATED, 31), 0, ticker

    def write(self, data):
        self._send(self.gzip.compress(data))
        return len(data)

    def close(self):
        self._send(self.gzip.flush())
        self.stdin.close()

    def _send(self, data):
        self.stdin.write(data)
        self.sent += len(data)
        self.ticker.update(f"Sending the image: {_size(self.sent)} sent")


def ship_image(target, tag, say):
    """Send the image to the server unless it has it: `docker save`, minus the layers the server holds.

    docker load skips reading a layer whose chain ID it already has, so only
    new layers travel (gzip level 1). Returns the number of bytes sent.
    """
    client = images.engine.client()
    image = client.images.get(tag)
    r = target.ssh(target.sudo(f"docker image inspect --format '{{{{.Id}}}}' {tag}"),
                   capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode == 0 and r.stdout.strip() == image.id:
        say(f"Image {tag} is already on the server ({image.id[:19]})")
        return 0
    have = set(remote_json(target, "layers"))
    started = time.monotonic()
    with tempfile.TemporaryFile() as saved, console.working(f"Saving {tag} for the transfer", say) as ticker:
        for chunk in client.api.get_image(tag, chunk_size=1 << 20):
            saved.write(chunk)
        saved.seek(0)
        with tarfile.open(fileobj=saved) as src:
            manifest = json.load(src.extractfile("manifest.json"))[0]
            diff_ids = json.load(src.extractfile(manifest["Config"]))["rootfs"]["diff_ids"]
            skip = {path for path, chain in zip(manifest["Layers"], chain_ids(diff_ids)) if chain in have}
            say(f"Sending image {tag} to the server: {len(manifest['Layers']) - len(skip)} of "
                f"{len(manifest['Layers'])} layers are new ({image.attrs['Size'] / 1e6:.0f} MB in all)")
            load = subprocess.Popen(target.argv(target.sudo("docker load -q")), stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            pipe = _GzipPipe(load.stdin, ticker)
            try:
                with tarfile.open(fileobj=pipe, mode="w|") as out:
                    for member in src:
                        if member.name in skip:
                            continue
                        data = src.extractfile(member)  # follows links: docker save links identical layers,
                        if member.issym() or member.islnk():  # and the layer linked to may have been skipped
                            member = tarfile.TarInfo(member.name)
                            member.size = data.seek(0, os.SEEK_END)
                            data.seek(0)
                        out.addfile(member, data)
                pipe.close()
            except BrokenPipeError:
                pass
            ticker.update("Loading the image on the server")
            err = load.stderr.read()
            returncode = load.wait()
    if returncode != 0:
        raise DeployError(f"loading the image on the server failed: {err.decode(errors='replace').strip()}")
    say(f"Image loaded on the server: {_size(pipe.sent)} sent in {time.monotonic() - started:.0f} s")
    return pipe.sent


def _size(n):
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


class Progress:
    """Turns ansible-runner events into a live display and a summary.

    The current task shows through a console ticker (a spinner on a terminal, a line every few seconds
    elsewhere); results other than ok/skipped are printed. A task counts as changed when its result or
    any of its loop items says so, including results hidden by no_log (their text still says changed).
    """

    def __init__(self, out=sys.stdout):
        self.out, self.tty = out, out.isatty()
        self.task_no, self.task, self.failures, self.changed_tasks = 0, "", [], []
        self.item_changed = False
        self.ticker = console.Ticker("starting Ansible", out).start()

    def _line(self, text):
        if self.tty:
            self.out.write("\r\033[K")
        self.out.write(text + "\n")
        self.out.flush()

    def __call__(self, event):
        kind, data = event.get("event"), event.get("event_data", {})
        res = data.get("res", {}) or {}
        changed = bool(res.get("changed")) or event.get("stdout", "").startswith("changed")
        if kind == "playbook_on_play_start":
            self._line(f"PLAY {data.get('play', '')}")
        elif kind == "playbook_on_task_start":
            self.task_no += 1
            self.task, self.item_changed = data.get("task", ""), False
            self.ticker.update(f"[task {self.task_no}] {self.task}")
        elif kind == "runner_item_on_ok":
            self.item_changed |= changed
        elif kind in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable", "runner_on_skipped"):
            status = {"runner_on_ok": "changed" if changed or self.item_changed else "ok",
                      "runner_on_failed": "failed", "runner_on_unreachable": "unreachable",
                      "runner_on_skipped": "skipped"}[kind]
            if kind == "runner_on_failed" and data.get("ignore_errors"):
                status = "failed (ignored)"
            elif kind in ("runner_on_failed", "runner_on_unreachable"):
                self.failures.append((data.get("task", self.task), data.get("host", ""), _message(res)))
            if status == "changed":
                self.changed_tasks.append(data.get("task", self.task))
            if not self.tty or status not in ("ok", "skipped"):
                self._line(f"[task {self.task_no}] {data.get('task', self.task)} | {data.get('host', '')}: {status}")
        return True

    def finish(self):
        self.ticker.stop()


def _message(res):
    if res.get("_ansible_no_log"):
        return "(output hidden: the task handles secrets)"
    parts = [str(res.get("msg", "")).strip()]
    for key in ("stderr", "stdout", "module_stderr"):
        text = str(res.get(key, "") or "").strip()
        if text:
            parts.append("\n".join(text.splitlines()[-15:]))
    return "\n".join(p for p in parts if p) or "no message"


def run_playbook(target, playbook, extravars, say):
    """Run one playbook of ansible/ against one target; returns the number of changed tasks."""
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    with tempfile.TemporaryDirectory(prefix="appliance-runner-") as private:
        os.chmod(private, 0o700)
        inventory = {"appliance": {"hosts": {target.host: {
            "ansible_host": target.host, "ansible_port": target.port, "ansible_user": target.user,
            "ansible_python_interpreter": "/usr/bin/python3",
            **({"ansible_ssh_private_key_file": target.key} if target.key else {})}}}}
        envvars = {
            "ANSIBLE_SSH_ARGS": " ".join(o for o in target.ssh_options() if o not in ("-i", target.key)),
            "ANSIBLE_PIPELINING": "True", "ANSIBLE_NOCOLOR": "True", "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_DISPLAY_SKIPPED_HOSTS": "False",
            "ANSIBLE_LOCALHOST_WARNING": "False", "ANSIBLE_FORCE_COLOR": "False",
        }
        progress, interrupted = Progress(), []
        # Ctrl+C: ansible-playbook runs in its own session, so ask the runner to stop it, then stop too.
        previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
        try:
            runner = ansible_runner.run(private_data_dir=private, playbook=str(ANSIBLE / playbook),
                                        inventory=inventory, extravars=extravars, envvars=envvars, quiet=True,
                                        event_handler=progress, cancel_callback=lambda: bool(interrupted))
        finally:  # (extravars go in a file under the 0700 directory, not on a command line)
            signal.signal(signal.SIGINT, previous)
            progress.finish()
        if interrupted:
            raise KeyboardInterrupt
        stats = runner.stats or {}
        if runner.status != "successful" or progress.failures:
            block = "\n".join(f"  task: {task}\n  host: {host}\n  " + msg.replace("\n", "\n  ")
                              for task, host, msg in progress.failures) or "\n".join(
                                  runner.stdout.read().splitlines()[-20:])
            say(f"\nProvisioning failed:\n{block}\n")
            raise DeployError(f"provisioning {target.host} failed at task "
                              f"{progress.failures[0][0] if progress.failures else '(see above)'!r}")
        changed = sum((stats.get("changed") or {}).values())
        say(f"{playbook}: {sum((stats.get('ok') or {}).values())} ok, changed={changed}"
            + (f" ({', '.join(progress.changed_tasks)})" if changed else ""))
        return changed


@contextlib.contextmanager
def connect(cfg, state, create=False, say=print):
    """(reachable Target, operator public key, private 0700 work dir) for cfg; the shared SSH connection
    and the work dir go afterwards. The local droplet is created or started only when create."""
    fresh = False
    if cfg.is_local:
        from . import droplet
        reach = droplet.ensure(cfg, say=say, create=create)
        host, port, user, key = reach["host"], reach["port"], reach["user"], reach["key"]
        fresh = reach["created"]
    else:
        host, port, user, key = cfg.host, cfg.ssh_port, cfg.ssh_user, cfg.ssh_key
    key, pubkey = _public_key(key)
    known_hosts = state.file("known_hosts")
    if fresh:  # a new droplet has new host keys and takes root again
        known_hosts.unlink(missing_ok=True)
        state.file(LOGIN).unlink(missing_ok=True)
    login = (state.read(LOGIN) or b"").decode().strip() or user
    with tempfile.TemporaryDirectory(prefix="appliance-") as work:
        os.chmod(work, 0o700)
        target = Target(host, port, login, key, str(known_hosts), work)
        check_reachable(target)
        try:
            yield target, pubkey, work
        finally:
            target.close()


def extra_packages(state):
    """The image's extra packages for this target (set by `rebuild --package`)."""
    return tuple((state.read(PACKAGES) or b"").decode().split())


def up(cfg, ca_bundle=None, say=print):
    """Provision cfg's target; returns the number of changes made."""
    if not shutil.which("ssh"):
        bootstrap.apt_install(["openssh-client"], "SSH to the server")
    started = time.monotonic()
    state, cert, where = render.prepare(cfg, say=say)
    if not state.file("known_hosts").exists():
        say(FIRST_RUN)
    with connect(cfg, state, create=True, say=say) as (target, pubkey, work):
        check_disk(target, cfg.user)
        tag = images.build(cfg.image, ca_bundle=ca_bundle, packages=extra_packages(state), say=say)
        rendered = Path(work) / "render"
        files = render.render(cfg, state, rendered)
        extravars = {
            **layout.role_vars(cfg.user),
            **render.role_files(files, rendered),
            "base_ssh_pubkey": pubkey,
            "base_timezone": cfg.timezone,
            "base_swap_mb": cfg.swap_mb,
            "jupyter_image_tag": tag,
            "jupyter_memory": cfg.memory,
            "jupyter_cpus": cfg.cpus,
        }
        changed = run_playbook(target, "server.yml", extravars, say)
        target.close()
        target = operator_login(target, cfg.user, state)
        changed += bool(ship_image(target, tag, say))
        changed += run_playbook(target, "site.yml", extravars, say)  # closes the root and password doors
        target.close()  # the operator's connection (connect() closes the first one)
    say(f"\nReady in {time.monotonic() - started:.0f} s, changed={changed}")
    say(f"  open:          {cfg.url}")
    say(f"  login:         {cfg.user}, with {where}")
    say(f"  certificate:   SHA-256 {tls.fingerprint(cert)}")
    say(f"  trust it once: import {state.file('ca.crt')} as a certificate authority in your browser")
    return changed
