"""Reaching a server over SSH: the target, clear errors for the usual failures, the switch to the
operator's login, and running the server-side helper (appliance/server/remote.py) there.

The local droplet is reached the same way; `connect` creates or starts it when asked.

Host keys: without a given fingerprint the first key that answers is trusted and kept
(StrictHostKeyChecking=accept-new); with --ssh-host-key-fingerprint only a key with that fingerprint
is written into the target's known_hosts, and SSH then accepts nothing else.
"""
import base64
import binascii
import contextlib
import hashlib
import json
import os
import shlex
import socket
import subprocess
import tempfile
from pathlib import Path

from . import server
from .errors import DeployError

DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")


class Target:
    """How to reach one server over SSH."""

    def __init__(self, host, port, user, key, known_hosts, control_dir, strict=False):
        self.host, self.port, self.user, self.key = host, port, user, key
        self.known_hosts, self.control_dir = known_hosts, control_dir
        self.strict = strict  # only the host keys already in known_hosts (a pinned fingerprint)

    def ssh_options(self):
        checking = "yes" if self.strict else "accept-new"
        opts = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=15", "-o", "ServerAliveInterval=15",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", f"StrictHostKeyChecking={checking}",
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


def public_key(key_path):
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


def greets(host, port, timeout=5):
    """Whether sshd answers on host:port with its greeting: a port that accepts is not enough (a server still
    booting, a NAT or proxy in front). Connection errors are raised (OSError)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        return s.recv(4) == b"SSH-"


def host_key_fingerprint(blob):
    """SHA256:... of a host key (its base64 blob) as OpenSSH prints it: base64 of the blob's SHA-256, unpadded."""
    digest = hashlib.sha256(base64.b64decode(blob, validate=True)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _host_keys(text):
    """(line, key type, fingerprint) of each host key line of known_hosts or ssh-keyscan output."""
    found = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or parts[0].startswith(("#", "@")):
            continue
        try:
            found.append((line, parts[1], host_key_fingerprint(parts[2])))
        except (ValueError, binascii.Error):
            continue
    return found


def pinned_host_keys(state):
    """'TYPE SHA256:...' of each host key the target's known_hosts holds."""
    return [f"{kind} {fp}" for _, kind, fp in _host_keys((state.read("known_hosts") or b"").decode())]


def pin_host_key(state, host, port, fingerprint):
    """Trust only a host key with this fingerprint: on first contact fetch the server's keys and keep the one
    that matches (nothing is written when none does); later, the kept keys must include it."""
    kept = _host_keys((state.read("known_hosts") or b"").decode())
    if kept:
        if fingerprint not in (fp for _, _, fp in kept):
            raise DeployError(f"{state.known_hosts} pins {', '.join(fp for _, _, fp in kept)}, not the given "
                              f"{fingerprint}; if the server was rebuilt, remove that file")
        return
    r = subprocess.run(["ssh-keyscan", "-T", "15", "-p", str(port), host], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=60)
    offered = _host_keys(r.stdout)
    if not offered:
        raise DeployError(f"no SSH host key from {host}:{port} (ssh-keyscan: {last_line(r.stderr)})")
    match = [line for line, _, fp in offered if fp == fingerprint]
    if not match:
        raise DeployError(f"the SSH host key of {host}:{port} is {', '.join(fp for _, _, fp in offered)}, not "
                          f"the given {fingerprint}: nothing was trusted")
    state.write("known_hosts", match[0] + "\n")


def refuse_system_account(target, user):
    """Refuse a user name the server already has as a system account (uid below 1000, or Debian's
    reserved 60000 and above such as nobody): one getent over the open connection."""
    r = target.ssh(f"getent passwd {shlex.quote(user)}", capture_output=True, text=True,
                   stdin=subprocess.DEVNULL, timeout=60)
    if r.returncode == 2:  # no such user: up creates it
        return
    fields = r.stdout.split(":")
    if r.returncode != 0 or len(fields) < 3 or not fields[2].isdigit():
        raise DeployError(f"cannot look up the user {user} on {target.host}: {last_line(r.stderr)}")
    uid = int(fields[2])
    if uid < 1000 or uid >= 60000:
        raise DeployError(f"the user name {user!r} is a system account on {target.host} (uid {uid}); "
                          "choose another with --user")


def operator_login(target, user, state):
    """Switch to the operator user once its key login and sudo are proven to work.

    Only then may site.yml turn root and password logins off: the operator can
    never be locked out. Later runs log in as that user (kept in the state).
    """
    if target.user == user:
        return target
    operator = Target(target.host, target.port, user, target.key, target.known_hosts, target.control_dir,
                      target.strict)
    r = operator.ssh("sudo -n true", capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    if r.returncode != 0:
        raise DeployError(f"cannot log in as {user} with sudo after creating it ({r.stderr.strip()[-200:]}); "
                          "SSH was left as it was")
    state.set_login(user)
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
    key, pubkey = public_key(key)
    known_hosts = state.known_hosts
    if fresh:  # a new droplet has new host keys and takes root again
        known_hosts.unlink(missing_ok=True)
        state.set_login(None)
    login = state.login() or user
    if cfg.ssh_host_key_fingerprint:
        pin_host_key(state, host, port, cfg.ssh_host_key_fingerprint)
    with tempfile.TemporaryDirectory(prefix="appliance-") as work:
        os.chmod(work, 0o700)
        target = Target(host, port, login, key, str(known_hosts), work,
                        strict=bool(cfg.ssh_host_key_fingerprint))
        check_reachable(target)
        try:
            yield target, pubkey, work
        finally:
            target.close()
