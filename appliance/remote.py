"""What day-2 commands run on the server: standard library only, Python 3.9+.

provision.py sends this file's source over SSH (`sudo python3 -c SOURCE
COMMAND ARGS`); nothing of it stays on the server. The archive checks are also
used locally, so a backup is verified by the same code on both ends.

Backup archives are tar.gz: `notebooks/...` (regular files and directories
only) followed by `MANIFEST.sha256` in sha256sum format.
"""
import grp
import gzip
import hashlib
import io
import json
import os
import pwd
import shutil
import ssl
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request

TOP = "notebooks"
MANIFEST = "MANIFEST.sha256"
CONTAINER = "jupyter"
LOW_DISK = 1 << 30  # free space below min(1 GiB, 10% of the filesystem) is "low"


class ArchiveError(Exception):
    pass


class _Hashing:
    def __init__(self, f):
        self.f, self.h = f, hashlib.sha256()

    def read(self, n=-1):
        data = self.f.read(n)
        self.h.update(data)
        return data


def _safe_name(name):
    parts = name.split("/")
    if name.startswith("/") or ".." in parts or "" in parts[1:] or parts[0] not in (TOP, MANIFEST):
        raise ArchiveError(f"the archive holds a path outside {TOP}/: {name!r}")
    return name


def read_archive(fileobj, write_file=None, make_dir=None):
    """Stream through an archive checking every file against the manifest; returns {name: sha256}.

    write_file(member, reader) / make_dir(member) are called to extract; a bad
    archive raises ArchiveError (possibly after some calls).
    """
    digests, listed = {}, None
    try:
        with tarfile.open(fileobj=fileobj, mode="r|gz") as tar:
            for member in tar:
                name = _safe_name(member.name.rstrip("/"))
                if name == MANIFEST:
                    data = tar.extractfile(member).read().decode()
                    listed = dict(reversed(line.split("  ", 1)) for line in data.splitlines() if line)
                elif member.isdir():
                    make_dir and make_dir(member)
                elif member.isfile():
                    reader = _Hashing(tar.extractfile(member))
                    if write_file:
                        write_file(member, reader)
                    while reader.read(1 << 20):
                        pass
                    digests[name] = reader.h.hexdigest()
                else:
                    raise ArchiveError(f"the archive holds something that is not a file or directory: {name!r}")
    except (tarfile.TarError, OSError, EOFError, UnicodeDecodeError, ValueError) as exc:
        raise ArchiveError(f"the archive is damaged or not a backup: {exc}") from None
    if listed is None:
        raise ArchiveError(f"the archive has no {MANIFEST}: not a backup made by provision.py")
    if listed != digests:
        bad = sorted(set(listed.items()) ^ set(digests.items()))
        raise ArchiveError(f"the archive does not match its checksums ({len(bad)} mismatches, "
                           f"first: {bad[0][0]!r})")
    return digests


def backup(directory):
    """Write a tar.gz of directory to stdout, checksums last; nothing is copied on the server's disk."""
    lines = []
    with gzip.GzipFile(fileobj=sys.stdout.buffer, mode="wb", compresslevel=6) as gz, \
            tarfile.open(fileobj=gz, mode="w|") as tar:
        for root, dirs, files in os.walk(directory):
            dirs.sort()
            rel = os.path.relpath(root, directory)
            arc = TOP if rel == "." else f"{TOP}/{rel}"
            tar.add(root, arcname=arc, recursive=False)
            for name in sorted(files):
                path = os.path.join(root, name)
                if not os.path.isfile(path) or os.path.islink(path):
                    print(f"skipped (not a regular file): {arc}/{name}", file=sys.stderr)
                    continue
                with open(path, "rb") as f:
                    info = tar.gettarinfo(arcname=f"{arc}/{name}", fileobj=f)
                    reader = _Hashing(f)
                    try:
                        tar.addfile(info, reader)
                    except OSError:
                        raise SystemExit(f"{path} changed while it was being saved; run backup again") from None
                lines.append(f"{reader.h.hexdigest()}  {arc}/{name}\n")
        data = "".join(lines).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
        tar.addfile(info, io.BytesIO(data))


def restore(directory, user):
    """Read an archive on stdin into a new directory, check it, then swap it in; the old one is kept."""
    owner = pwd.getpwnam(user)
    parent = os.path.dirname(directory.rstrip("/"))
    work = os.path.join(parent, f".restore-{os.getpid()}")
    os.mkdir(work, 0o700)

    def make_dir(member):
        path = os.path.join(work, member.name)
        os.makedirs(path, exist_ok=True)
        os.chmod(path, member.mode & 0o777 | 0o700)

    def write_file(member, reader):
        path = os.path.join(work, member.name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(reader, out, 1 << 20)
            os.fchmod(out.fileno(), member.mode & 0o777)
            os.utime(out.fileno(), (member.mtime, member.mtime))

    try:
        digests = read_archive(sys.stdin.buffer, write_file, make_dir)
        new = os.path.join(work, TOP)
        os.makedirs(new, exist_ok=True)
        for root, dirs, files in os.walk(new):
            for name in [root] + [os.path.join(root, f) for f in dirs + files]:
                os.lchown(name, owner.pw_uid, owner.pw_gid)
        os.sync()
    except ArchiveError as exc:
        shutil.rmtree(work)
        raise SystemExit(str(exc)) from None
    kept = f"{directory.rstrip('/')}.before-restore-{time.strftime('%Y%m%d-%H%M%S')}"
    if os.path.exists(directory):
        os.rename(directory, kept)
    os.rename(new, directory)
    os.rmdir(work)
    # the container's bind mount still holds the old directory: restart it onto the new one
    subprocess.run(["docker", "restart", CONTAINER], check=True, stdout=subprocess.DEVNULL)
    print(json.dumps({"files": len(digests), "kept": kept if os.path.exists(kept) else None}))


def disks(paths):
    """Free space of each distinct filesystem holding one of paths."""
    seen, out = set(), []
    for path in paths:
        while not os.path.exists(path):
            path = os.path.dirname(path)
        st, fs = os.stat(path), os.statvfs(path)
        if st.st_dev in seen:
            continue
        seen.add(st.st_dev)
        size, free = fs.f_blocks * fs.f_frsize, fs.f_bavail * fs.f_frsize
        out.append({"path": path, "size": size, "free": free, "low": free < min(LOW_DISK, size // 10)})
    return out


def _run(*cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def _https_answers():
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        urllib.request.urlopen("https://127.0.0.1/api/status", context=ctx, timeout=10)
        return "open without a login"
    except urllib.error.HTTPError as exc:
        return "login required" if exc.code == 401 else f"HTTP {exc.code}"
    except OSError as exc:
        return f"no answer ({exc})"


def status(cert, label_name, *paths):
    """Facts about the appliance (JSON): cert is the served certificate's path, label_name the image's
    versions-manifest label, paths where the appliance writes."""
    facts = {"container": None, "image": None}
    inspect = _run("docker", "inspect", "--format", "{{json .}}", CONTAINER)
    if inspect:
        c = json.loads(inspect)
        state = c["State"]
        facts["container"] = {"state": state["Status"], "health": (state.get("Health") or {}).get("Status"),
                              "started_at": state["StartedAt"], "restarts": c.get("RestartCount", 0),
                              "image_id": c["Image"]}
        image = _run("docker", "image", "inspect", "--format", "{{json .}}", c["Image"])
        if image:
            i = json.loads(image)
            label = (i["Config"].get("Labels") or {}).get(label_name, "")
            facts["image"] = {"tags": i.get("RepoTags") or [], "size": i["Size"],
                              "manifest_sha256": hashlib.sha256(label.encode()).hexdigest() if label else None}
    facts["nginx"] = _run("systemctl", "is-active", "nginx") or "inactive"
    facts["login_verifier"] = _run("systemctl", "is-active", "appliance-auth.socket") or "inactive"
    facts["https"] = _https_answers()
    try:
        with open(cert) as f:
            facts["certificate_pem"] = f.read()
    except OSError:
        facts["certificate_pem"] = None
    facts["disks"] = disks(paths)
    with open("/proc/meminfo") as f:
        mem = {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f)}
    facts["memory"] = {"total": mem["MemTotal"], "available": mem["MemAvailable"]}
    with open("/proc/uptime") as f:
        facts["server_uptime_s"] = int(float(f.read().split()[0]))
    facts["now"] = time.time()
    print(json.dumps(facts))


def layers():
    """Chain IDs of every image layer the server's engine holds (JSON list)."""
    ids = (_run("docker", "image", "ls", "-aq") or "").split()
    found = _run("docker", "image", "inspect", "--format", "{{json .RootFS.Layers}}", *ids) if ids else None
    chains = {chain for line in (found or "").splitlines() for chain in chain_ids(json.loads(line) or [])}
    print(json.dumps(sorted(chains)))


def chain_ids(diff_ids):
    """The chain ID of each layer of an image, from its layers' diff IDs (as docker computes them)."""
    chain = None
    for diff in diff_ids:
        chain = diff if chain is None else "sha256:" + hashlib.sha256(f"{chain} {diff}".encode()).hexdigest()
        yield chain


def install(path, mode, group):
    """Atomically replace path with stdin (root-owned, mode and group as given)."""
    data = sys.stdin.buffer.read()
    tmp = f"{path}.new-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        os.fchown(out.fileno(), 0, grp.getgrnam(group).gr_gid)
        os.fchmod(out.fileno(), int(mode, 8))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    commands = {"backup": backup, "restore": restore, "status": status, "layers": layers, "install": install,
                "disks": lambda *paths: print(json.dumps(disks(paths)))}
    commands[command](*args)
