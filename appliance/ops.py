"""Day-2 commands on a provisioned appliance: status, logs, backup, restore, passwd, rebuild (and --bake).

Each reaches the server the way `up` does (the local droplet without --host)
and runs the server side of its work through remote.py.
"""
import contextlib
import datetime
import json
import os
import shlex
import subprocess
import time
from pathlib import Path

from packaging.utils import canonicalize_name

from . import acme, auth, cluster, console, deploy, images, layout, ssh
from .errors import BackupError, DeployError
from .server.archive import ArchiveError, read_archive
from .state import State

LOGS = {
    "jupyter": f"docker logs --tail 200 {{follow}} {layout.CONTAINER}",
    "nginx": "tail -n 100 {follow} /var/log/nginx/access.log /var/log/nginx/error.log",
    "auth": f"journalctl --no-pager -n 100 {{follow}} -u {layout.AUTH_SERVICE}.service",
    "dask-scheduler": f"docker logs --tail 200 {{follow}} {layout.DASK_SCHEDULER_CONTAINER}",
    "dask-worker": f"docker logs --tail 200 {{follow}} {layout.DASK_WORKER_CONTAINER}",
}


@contextlib.contextmanager
def session(cfg, say=print):
    """A reachable Target for cfg and its State; the shared SSH connection is closed afterwards."""
    state = State(cfg.target_dir).ensure()
    with ssh.connect(cfg, state, say=say) as (target, _, _):
        yield target, state


# status -------------------------------------------------------------------------------------------------

def _problems(facts):
    c = facts["container"]
    found = []
    if c is None:
        found.append("the notebook container does not exist")
    elif c["state"] != "running" or c["health"] != "healthy":
        found.append(f"the notebook container is {c['state']}" + (f", {c['health']}" if c["health"] else ""))
    for name in ("nginx", "login_verifier"):
        if facts[name] != "active":
            found.append(f"{name.replace('_', ' ')} is {facts[name]}")
    if facts["https"] != "login required":
        found.append(f"https on the server: {facts['https']}")
    cert = facts.get("certificate")
    if cert is None:
        found.append("no TLS certificate installed")
    found += acme.problems(cert, facts.get("acme"))
    found += [f"disk nearly full: {d['path']} has {d['free'] / 1e6:.0f} MB free" for d in facts["disks"] if d["low"]]
    return found


def _duration(seconds):
    seconds = int(seconds)
    d, h, m = seconds // 86400, seconds // 3600 % 24, seconds // 60 % 60
    return f"{d}d {h}h {m}m" if d else f"{h}h {m}m" if h else f"{m}m {seconds % 60}s"


def _report(cfg, facts):
    c, i, cert = facts["container"], facts["image"], facts["certificate"]
    lines = [f"{cfg.url}  {'healthy' if facts['healthy'] else 'NOT HEALTHY'}"]
    if c:
        started = datetime.datetime.fromisoformat(c["started_at"][:19]).replace(tzinfo=datetime.timezone.utc)
        lines.append(f"  notebook container: {c['state']}, {c['health'] or 'no healthcheck'}, "
                     f"up {_duration(facts['now'] - started.timestamp())}, {c['restarts']} restarts")
    if i:
        lines.append(f"  image:       {', '.join(i['tags']) or '(untagged)'} {c['image_id'][:19]} "
                     f"({i['size'] / 1e6:.0f} MB), versions manifest sha256 {(i['manifest_sha256'] or '?')[:16]}")
    lines.append(f"  nginx:       {facts['nginx']}, login verifier {facts['login_verifier']}, "
                 f"https {facts['https']}")
    if cert:
        lines.append(f"  certificate: expires {cert['expires'][:10]} ({cert['days_left']} days), "
                     f"from {cert['issuer']}, SHA-256 {cert['sha256']}")
    lines += acme.report(facts.get("acme"))
    lines.append(f"  ssh host key: {', '.join(facts['ssh_host_keys']) or 'none pinned'}")
    for d in facts["disks"]:
        lines.append(f"  disk {d['path']}: {d['free'] / 1e9:.1f} GB free of {d['size'] / 1e9:.1f} GB"
                     + ("  LOW" if d["low"] else ""))
    m = facts["memory"]
    lines.append(f"  memory:      {m['available'] / 1e9:.1f} GB available of {m['total'] / 1e9:.1f} GB")
    lines.append(f"  server up:   {_duration(facts['server_uptime_s'])}")
    for w in facts["dask_workers"]:
        tasks = ", ".join(f"{n} {k}" for k, n in sorted(w["tasks"].items()) if n) or "no tasks"
        lines.append(f"  dask worker {w['name']}: {w['status']}, {w['threads']} threads, memory "
                     f"{(w['memory'] or 0) / 1e6:.0f} MB of {(w['memory_limit'] or 0) / 1e6:.0f} MB, {tasks} "
                     f"({w['address']})")
    lines += [f"  problem: {p}" for p in facts["problems"]]
    return "\n".join(lines)


def status(cfg, as_json=False, say=print):
    """Print the appliance's state; returns 0 only when it is healthy."""
    with session(cfg, say) as (target, state):
        facts = ssh.remote_json(target, "status", layout.TLS_CERT, images.LABEL, layout.CONTAINER,
                                f"{layout.AUTH_SERVICE}.socket", layout.ACME_CONFIG, layout.ACME_STATUS,
                                f"{layout.ACME_SERVICE}.timer", *layout.server_paths(cfg.user))
        expected = [w["name"] for w in state.workers()]
        facts["dask_workers"], dask_problems = cluster.workers_status(target, expected) if expected else ([], [])
    facts["ssh_host_keys"] = ssh.pinned_host_keys(state)
    facts["certificate"] = acme.certificate(facts.pop("certificate_pem"))
    facts["problems"] = _problems(facts) + dask_problems
    facts["healthy"] = not facts["problems"]
    say(json.dumps(facts, indent=2) if as_json else _report(cfg, facts))
    return 0 if facts["healthy"] else 1


# logs ---------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _worker_session(cfg, name, say):
    state = State(cfg.target_dir).ensure()
    workers = state.workers()
    found = next((w for w in workers if name in (None, w["name"])), None)
    if found is None:
        raise DeployError(f"no Dask worker {name!r}: the workers are {', '.join(w['name'] for w in workers)}"
                          if name and workers else "this appliance has no Dask workers (up --workers N)")
    with cluster.worker_target(cfg, state, {**found, "created": False}) as (target, _, _):
        yield target, state


def logs(cfg, service="jupyter", follow=False, say=print, worker=None):
    command = LOGS[service].format(follow="-f" if follow else "")
    if follow:  # stop the follower on the server when this end goes away (its stdin then ends)
        command = "sh -c " + shlex.quote(f"{command} & f=$!; cat >/dev/null; kill $f")
    where = _worker_session(cfg, worker, say) if service == "dask-worker" else session(cfg, say)
    with where as (target, _):
        proc = subprocess.Popen(target.argv(target.sudo(command)),
                                stdin=subprocess.PIPE if follow else subprocess.DEVNULL)
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            return 0
    if code != 0 and not follow:
        raise DeployError(f"reading the {service} log failed (exit {code})")
    return 0


# backup and restore -------------------------------------------------------------------------------------

def _check_archive(path):
    try:
        with open(path, "rb") as f:
            return read_archive(f)
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror}") from None
    except ArchiveError as exc:
        raise BackupError(f"{path}: {exc}") from None


def backup(cfg, out, say=print):
    """Stream the notebooks into a local tar.gz (0600), check it, then give it its name."""
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    for path in (out, partial):  # writing through a link would write wherever it points
        if path.is_symlink():
            raise BackupError(f"{path} is a symbolic link; give the name of a new or regular file")
    if out.is_dir():
        raise BackupError(f"{out} is a directory; give a file name like notebooks.tar.gz")
    directory = layout.notebooks_dir(cfg.user)
    with session(cfg, say) as (target, _):
        partial.unlink(missing_ok=True)  # a stale one from an interrupted run; O_EXCL below refuses any other
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise BackupError(f"cannot create {partial}: {exc.strerror}") from None
        with os.fdopen(fd, "wb") as f, console.working(f"Receiving the notebooks from {directory}", say) as ticker:
            started, received = time.monotonic(), 0
            proc = subprocess.Popen(target.argv(target.sudo(ssh.remote_command("backup", directory))),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            while chunk := proc.stdout.read(1 << 20):
                f.write(chunk)
                received += len(chunk)
                ticker.update(f"Receiving the notebooks: {received / 1e6:.1f} MB")
            err = proc.stderr.read().decode(errors="replace").strip()
            if proc.wait() != 0:
                partial.unlink()
                raise BackupError(f"backup on the server failed: {ssh.last_line(err)}")
    digests = _check_archive(partial)
    os.replace(partial, out)
    say(f"Backed up {len(digests)} files from {directory} to {out} "
        f"({received / 1e6:.1f} MB, checked, in {time.monotonic() - started:.0f} s)")
    for line in err.splitlines():
        say(f"  {line}")


def restore(cfg, archive, say=print):
    """Check the archive here, then replace the notebooks with it on the server (the old ones are kept)."""
    digests = _check_archive(archive)
    say(f"{archive}: {len(digests)} files, checksums match")
    directory = layout.notebooks_dir(cfg.user)
    with session(cfg, say) as (target, _), open(archive, "rb") as f:
        r = ssh.remote(target, "restore", directory, cfg.user, layout.NOTEBOOK_ACCOUNT, layout.NOTEBOOKS_MODE,
                       layout.CONTAINER, stdin=f, capture_output=True, text=True)
    if r.returncode != 0:
        raise BackupError("restore on the server failed, its notebooks were left as they were: "
                          f"{ssh.last_line(r.stderr)}")
    result = json.loads(r.stdout)
    say(f"Restored {result['files']} files into {directory}; the notebook server was restarted onto them")
    if result["kept"]:
        say(f"  the notebooks that were there are kept in {result['kept']} on the server")


# passwd -------------------------------------------------------------------------------------------------

def passwd(cfg, say=print):
    """Set a new password: written here, then installed atomically on the server; old sessions end."""
    with session(cfg, say) as (target, state):
        where = auth.ensure_htpasswd(cfg, state, force_new=True)
        # the path unit would notice it too; starting its service here waits until nginx has the new signing key
        r = ssh.remote(target, "install", layout.HTPASSWD, layout.SECRET_MODE, layout.WEB_GROUP,
                       f"{layout.SESSION_SERVICE}.service", input=state.read("htpasswd"), capture_output=True)
    if r.returncode != 0:
        raise DeployError("the new password is saved here but the server did not take it "
                          f"({r.stderr.decode(errors='replace').strip()[-200:]}); run `up` to apply it")
    say(f"Password changed for {cfg.user!r} ({where}); it works now, and logins with the old one no longer do")


# rebuild ------------------------------------------------------------------------------------------------

def _merge(old, new):
    """Package specs by name: a new spec replaces an old one for the same package."""
    by_name = {canonicalize_name(spec.split("==")[0]): spec for spec in (*old, *new)}
    return tuple(sorted(by_name.values(), key=str.lower))


def bakeable(found):
    """NAME==VERSION of each package notebooks installed (remote.py `user_packages`), for the image's last
    layer; refuses, changing nothing, what the package index cannot give the build again."""
    direct = sorted(p["name"] for p in found if p["direct"])
    if direct:
        raise DeployError(f"{', '.join(direct)} came from a URL or a local path, not the package index, so "
                          "the image cannot install it again: `%pip uninstall` it (or install it from the "
                          "index) and bake again; nothing was changed")
    specs = [f"{p['name']}=={p['version']}" for p in found]
    bad = [spec for spec in specs if not images.is_package(spec)]
    if bad:
        raise DeployError(f"the package directory holds {bad[0]!r}, which is not NAME==VERSION; nothing was "
                          "changed")
    return _merge((), specs)


def _user_packages(cfg, say):
    with session(cfg, say) as (target, _):
        return bakeable(ssh.remote_json(target, "user_packages", layout.packages_dir(cfg.user),
                                        layout.NOTEBOOK_ACCOUNT))


def _forget_user_packages(cfg, baked, say):
    """Delete from the package directory what the image now holds (only those versions: whatever a
    notebook installed meanwhile stays)."""
    pairs = json.dumps([spec.split("==") for spec in baked])
    with session(cfg, say) as (target, _):
        r = ssh.remote(target, "forget_user_packages", layout.packages_dir(cfg.user), layout.NOTEBOOK_ACCOUNT,
                       input=pairs, capture_output=True, text=True)
    if r.returncode != 0:
        raise DeployError("the image holds the baked packages, but removing them from the package directory "
                          f"failed ({ssh.last_line(r.stderr)}); the image's copies come first, so nothing "
                          "breaks: run `rebuild --bake` again to tidy up")
    return json.loads(r.stdout)


def rebuild(cfg, packages=(), clear=False, bake=False, ca_bundle=None, say=print):
    """Build the image with the target's extra packages and roll it out; returns `up`'s change count.

    bake: first add what notebooks installed with `%pip install` (the package directory on the server), and
    once the new image runs, delete those from the directory: they live in the image's last layer, its
    manifest and the state's package list from then on. A --package for the same name wins.
    """
    state = State(cfg.target_dir).ensure()
    baked = _user_packages(cfg, say) if bake else ()
    if bake:
        say(f"Installed by notebooks: {', '.join(baked) or 'nothing'}")
    wanted = _merge(() if clear else state.packages(), (*baked, *packages))
    images.build(cfg.image, ca_bundle=ca_bundle, packages=wanted, say=say)  # a failed build stores nothing
    state.set_packages(wanted)
    say(f"Extra packages: {', '.join(wanted) or 'none'}")
    changes = deploy.up(cfg, ca_bundle=ca_bundle, say=say)
    if baked:
        removed = _forget_user_packages(cfg, baked, say)
        say(f"Baked into the image: {', '.join(baked)}; removed from {layout.packages_dir(cfg.user)}: "
            f"{', '.join(removed) or 'nothing'}")
    return changes
