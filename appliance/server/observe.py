"""What `up` manages on the server, observed in one pass: remote.py's `digest` compares it with what the
last full run left (standard library only; its source goes ahead of remote.py's, see __init__.py).

The watch list comes from the operator's side (appliance/digest.py reads it from the roles): paths,
packages, systemd units, users, containers and sysctl keys; the firewall, sshd's effective settings and
the time zone are always observed. Each thing observed becomes one short string, so the record holds no
file content (the htpasswd and keys are among the paths: only their SHA-256 is kept, root-only).
"""
import hashlib
import json
import os
import pwd
import grp
import stat
import subprocess


def _call(*cmd):
    """(exit status, output); 127 when the program is not installed."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True)
    except OSError:
        return 127, ""
    return r.returncode, r.stdout


def _out(*cmd):
    code, out = _call(*cmd)
    return f"exit {code}: {out.strip()}"


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


def _path(path):
    """Type, mode, owner, group and content (SHA-256) or link target; "~user" is that user's home."""
    path = os.path.expanduser(path)
    try:
        st = os.lstat(path)
    except OSError:
        return "missing"
    owner = f"{stat.S_IMODE(st.st_mode):o} {st.st_uid}:{st.st_gid}"
    if stat.S_ISLNK(st.st_mode):
        return f"link {os.readlink(path)}"
    if stat.S_ISDIR(st.st_mode):
        return f"dir {owner}"
    try:
        return f"file {owner} {_sha256(path)}"
    except OSError as exc:
        return f"unreadable {owner} {exc.strerror}"


def _user(name):
    """The passwd entry, the groups it is in and its SSH keys' SHA-256."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return "missing"
    groups = sorted(g.gr_name for g in grp.getgrall() if name in g.gr_mem)
    keys = _path(os.path.join(entry.pw_dir, ".ssh", "authorized_keys"))
    return f"{entry.pw_uid}:{entry.pw_gid} {entry.pw_dir} {entry.pw_shell} {','.join(groups)} keys {keys}"


def _packages(names):
    if not names:
        return {}
    _, out = _call("dpkg-query", "-W", "-f", "${Package} ${db:Status-Abbrev}\n", *names)
    found = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    return {f"package {n}": found.get(n, "missing").strip() for n in names}


def _units(names):
    if not names:
        return {}
    _, out = _call("systemctl", "show", "--property=Id,LoadState,ActiveState,UnitFileState", "--", *names)
    blocks = [dict(line.split("=", 1) for line in b.splitlines() if "=" in line) for b in out.split("\n\n")]
    return {f"unit {n}": " ".join(b.get(k, "?") for k in ("LoadState", "ActiveState", "UnitFileState"))
            for n, b in zip(names, blocks + [{}] * len(names))}


def _containers(names):
    """Container id (a recreated container is a new one), image id and state; health is reported apart."""
    seen, health = {}, {}
    for name in names:
        code, out = _call("docker", "inspect", "--format", "{{json .}}", name)
        if code != 0 or not out.strip():
            seen[f"container {name}"] = "missing"
            continue
        c = json.loads(out)
        seen[f"container {name}"] = f"{c['Id']} {c['Image']} {c['State']['Status']}"
        health[name] = (c["State"].get("Health") or {}).get("Status", "none")
    return seen, health


def observe(watch):
    """{thing: fingerprint} for the watch list, and the containers' health."""
    seen = {f"path {p}": _path(p) for p in watch.get("paths", [])}
    seen.update({f"user {u}": _user(u) for u in watch.get("users", [])})
    seen.update(_packages(watch.get("packages", [])))
    seen.update(_units(watch.get("units", [])))
    for key in watch.get("sysctl", []):
        try:
            with open("/proc/sys/" + key.replace(".", "/")) as f:
                seen[f"sysctl {key}"] = f.read().strip()
        except OSError:
            seen[f"sysctl {key}"] = "missing"
    containers, health = _containers(watch.get("containers", []))
    seen.update(containers)
    seen["firewall"] = _out("ufw", "status", "verbose")
    seen["sshd"] = hashlib.sha256(_out("sshd", "-T").encode()).hexdigest()
    seen["timezone"] = os.path.realpath("/etc/localtime")
    return seen, health
