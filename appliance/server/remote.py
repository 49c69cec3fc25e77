"""What day-2 commands run on the server: standard library only, Python 3.9+.

provision.py sends this file's source over SSH (`sudo python3 -c SOURCE
COMMAND ARGS`), preceded by archive.py's (appliance.server.remote_source);
nothing of it stays on the server. Server paths and names come as arguments
(from appliance/layout.py on the operator's side).
"""
import csv
import email.parser
import fcntl
import glob
import grp
import gzip
import hashlib
import http.client
import io
import json
import os
import pwd
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request

if __name__ != "__main__":  # imported on the operator's machine; on the server archive.py's source runs first
    from .archive import MANIFEST, TOP, ArchiveError, Hashing, chain_ids, read_archive
    from .observe import observe

LOW_DISK = 1 << 30  # free space below min(1 GiB, 10% of the filesystem) is "low"


def _add_tree(tar, dir_fd, arc, lines):
    """Add the directory open at dir_fd and everything under it. Each name is opened relative to its
    parent's descriptor with O_NOFOLLOW and checked with fstat, so a directory or file swapped for a
    symlink while the walk runs (as root) cannot lead it out of the notebooks."""
    st = os.fstat(dir_fd)
    info = tarfile.TarInfo(arc)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, stat.S_IMODE(st.st_mode), int(st.st_mtime)
    tar.addfile(info)
    for name in sorted(os.listdir(dir_fd)):
        try:
            kind = stat.S_IFMT(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
            flags = os.O_DIRECTORY if kind == stat.S_IFDIR else os.O_NONBLOCK  # a FIFO must not block
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY | flags, dir_fd=dir_fd) \
                if kind in (stat.S_IFDIR, stat.S_IFREG) else None
        except OSError:  # gone, or turned into a symlink (ELOOP) since it was listed
            fd = None
        st = os.fstat(fd) if fd is not None else None
        if st is None or stat.S_IFMT(st.st_mode) != kind:
            print(f"skipped (not a regular file or directory): {arc}/{name}", file=sys.stderr)
        elif kind == stat.S_IFDIR:
            _add_tree(tar, fd, f"{arc}/{name}", lines)
        else:
            with os.fdopen(fd, "rb") as f:
                fd = None
                info = tarfile.TarInfo(f"{arc}/{name}")
                info.size, info.mode, info.mtime = st.st_size, stat.S_IMODE(st.st_mode), int(st.st_mtime)
                reader = Hashing(f)
                try:
                    tar.addfile(info, reader)
                except OSError:
                    raise SystemExit(f"{arc}/{name} changed while it was being saved; run backup again") from None
            lines.append(f"{reader.h.hexdigest()}  {arc}/{name}\n")
        if fd is not None:
            os.close(fd)


def backup(directory):
    """Write a tar.gz of directory to stdout, checksums last; nothing is copied on the server's disk."""
    try:
        top = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise SystemExit(f"cannot read {directory}: {exc.strerror}") from None
    lines = []
    with gzip.GzipFile(fileobj=sys.stdout.buffer, mode="wb", compresslevel=6) as gz, \
            tarfile.open(fileobj=gz, mode="w|") as tar:
        try:
            _add_tree(tar, top, TOP, lines)
        finally:
            os.close(top)
        data = "".join(lines).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
        tar.addfile(info, io.BytesIO(data))


def restore(directory, user, group, top_mode, container):
    """Read an archive on stdin into a new directory, check it, then swap it in; the old one is kept.

    As `up` leaves them: owned by user, shared with group (group-writable, directories setgid), the
    directory itself with top_mode (octal)."""
    owner, gid = pwd.getpwnam(user), grp.getgrnam(group).gr_gid
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
                os.lchown(name, owner.pw_uid, gid)
                mode = os.lstat(name).st_mode
                os.chmod(name, mode | (0o2070 if stat.S_ISDIR(mode) else 0o060))
        os.chmod(new, int(top_mode, 8))
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
    subprocess.run(["docker", "restart", container], check=True, stdout=subprocess.DEVNULL)
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


def _acme(config, status_path, timer):
    """The ACME certificate's settings, its renewal timer's state and the last attempts (None without
    --tls acme: no config file)."""
    try:
        with open(config) as f:
            settings = json.load(f)
    except (OSError, ValueError):
        return None
    try:
        with open(status_path) as f:
            attempts = json.load(f)["attempts"]
    except (OSError, ValueError, KeyError, TypeError):
        attempts = []
    return {"domain": settings.get("domain"), "directory": settings.get("directory"),
            "timer": _run("systemctl", "is-active", timer) or "inactive",
            "timer_enabled": _run("systemctl", "is-enabled", timer) or "disabled",
            "last": attempts[-1] if attempts else None,
            "last_renewal": next((a for a in reversed(attempts) if a.get("action") == "renewal"), None)}


def acme(config, status_path, timer, cert):
    """The ACME facts and the served certificate (JSON), for `up`'s summary."""
    facts = {"acme": _acme(config, status_path, timer)}
    try:
        with open(cert) as f:
            facts["certificate_pem"] = f.read()
    except OSError:
        facts["certificate_pem"] = None
    print(json.dumps(facts))


def acme_directory(url):
    """Does url answer as an ACME directory? A CA bundle to trust may come on stdin (PEM, else empty).
    Prints {"ok", "message"}: checked before `up --tls acme` changes anything."""
    bundle = sys.stdin.read()
    ctx = ssl.create_default_context(cadata=bundle) if bundle.strip() else ssl.create_default_context()
    if not bundle.strip() and not ctx.cert_store_stats()["x509_ca"]:
        # no CA certificates on the server yet (ca-certificates comes with certbot): check the answer only
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": "application/json"}),
                                    context=ctx, timeout=20) as r:
            body = json.loads(r.read(1 << 20))
    except urllib.error.HTTPError as exc:
        result = {"ok": False, "message": f"answers HTTP {exc.code}"}
    except (OSError, ValueError) as exc:
        reason = exc if isinstance(exc, ssl.SSLError) else getattr(exc, "reason", None) or exc
        if isinstance(reason, ssl.SSLError):
            why = getattr(reason, "verify_message", None) or reason.reason or reason
            result = {"ok": False, "message": f"fails TLS ({why}); a private ACME CA needs --acme-ca-bundle"}
        elif isinstance(exc, ValueError):
            result = {"ok": False, "message": "does not answer with JSON"}
        else:
            result = {"ok": False, "message": f"does not answer ({reason})"}
    else:
        missing = [k for k in ("newNonce", "newAccount", "newOrder") if not isinstance(body, dict) or k not in body]
        result = {"ok": not missing, "message": f"is not an ACME directory (no {', '.join(missing)})" if missing
                  else "answers as an ACME directory"}
    print(json.dumps(result))


def status(cert, label_name, container, auth_socket_unit, acme_config, acme_status, acme_timer, *paths):
    """Facts about the appliance (JSON): cert is the served certificate's path, label_name the image's
    versions-manifest label, container the notebook container, auth_socket_unit the login verifier's
    socket unit, acme_* the ACME certificate's settings, status file and renewal timer, paths where the
    appliance writes."""
    facts = {"container": None, "image": None, "acme": _acme(acme_config, acme_status, acme_timer)}
    inspect = _run("docker", "inspect", "--format", "{{json .}}", container)
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
    facts["login_verifier"] = _run("systemctl", "is-active", auth_socket_unit) or "inactive"
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


def _image(ref, label):
    found = _run("docker", "image", "inspect", "--format", "{{json .}}", ref)
    if not found:
        return None
    image = json.loads(found)
    return {"id": image["Id"], "source": ((image.get("Config") or {}).get("Labels") or {}).get(label)}


def _reaches(host, port):
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
        return True
    except OSError:
        return False


def delivery(tag, label, root, *index_hosts):
    """What decides how the image comes (appliance/delivery.py): whether Docker answers, the image `tag` and
    the root image the engine holds (id, the `label` saying what it was built from), whether the package
    index's hosts (host:port) answer."""
    docker = bool(shutil.which("docker")) and _run("docker", "version", "--format", "{{.Server.Version}}") is not None
    print(json.dumps({"docker": docker, "image": _image(tag, label) if docker else None,
                      "root": _image(root, label) if docker else None,
                      "index": all(_reaches(*h.rsplit(":", 1)) for h in index_hosts)}))


def install(path, mode, group, *then):
    """Atomically replace path with stdin (root-owned, mode and group as given); then start the units given
    (oneshot ones: once they have run)."""
    _replace(path, sys.stdin.buffer.read(), mode, group)
    for unit in then:
        subprocess.run(["systemctl", "start", unit], check=True, stdout=subprocess.DEVNULL)


def _replace(path, data, mode, group):
    tmp = f"{path}.new-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        os.fchown(out.fileno(), 0, grp.getgrnam(group).gr_gid)
        os.fchmod(out.fileno(), int(mode, 8))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=5)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def _last_used(auth_socket):
    """{token name: epoch seconds} from the login verifier ({} when it does not answer)."""
    conn = _UnixConnection(auth_socket)
    try:
        conn.request("GET", "/last-used")
        return json.loads(conn.getresponse().read())
    except (OSError, ValueError):
        return {}
    finally:
        conn.close()


def tokens(path, mode, group, auth_socket):
    """Create, revoke or list API tokens: a JSON request on stdin, {"op": "create", "name", "sha256", "created",
    "expires"} | {"op": "revoke", "name"} | {"op": "list"}; prints every token's name, created, expires and
    last use as JSON. The file keeps hashes only (the token itself never comes here); the verifier
    re-reads it when it changes."""
    request = json.loads(sys.stdin.read())
    lock = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two operators at once: neither change is lost
        try:
            with open(path) as f:
                entries = json.load(f)["tokens"]
        except FileNotFoundError:
            entries = []
        name = request.get("name")
        if request["op"] == "create":
            if any(t["name"] == name for t in entries):
                raise SystemExit(f"a token named {name!r} exists already: revoke it or choose another name")
            if len(bytes.fromhex(request["sha256"])) != 32:
                raise SystemExit("not a SHA-256")
            entries.append({k: request[k] for k in ("name", "sha256", "created", "expires")})
        elif request["op"] == "revoke":
            if not any(t["name"] == name for t in entries):
                raise SystemExit(f"no token is named {name!r}")
            entries = [t for t in entries if t["name"] != name]
        if request["op"] != "list":
            _replace(path, json.dumps({"tokens": entries}, indent=1).encode(), mode, group)
    finally:
        os.close(lock)
    used = _last_used(auth_socket)
    print(json.dumps([{"name": t["name"], "created": t["created"], "expires": t["expires"],
                       "last_used": used.get(t["name"])} for t in entries]))


# What notebooks installed with `%pip install` (a Python user base): read and deleted as the notebook
# account, never as root, so a link or a RECORD line the account planted reaches only what it owns anyway.

def _as_account(account, work, *args):
    """work(*args) in a child process that is `account` (no supplementary groups); its JSON-able result."""
    try:
        entry = pwd.getpwnam(account)
    except KeyError:
        sys.exit(f"the server has no account {account}: run `up` first")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_end)
        code = 0
        try:
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            answer = {"result": work(*args)}
        except Exception as exc:  # reported by the parent
            answer, code = {"error": f"{type(exc).__name__}: {exc}"}, 1
        with os.fdopen(write_end, "w") as out:
            out.write(json.dumps(answer))
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as got:
        text = got.read()
    os.waitpid(pid, 0)
    answer = json.loads(text or '{"error": "the child process died"}')
    if "error" in answer:
        sys.exit(f"as {account}: {answer['error']}")
    return answer["result"]


def _canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed(directory):
    """Each distribution under the user base `directory`: name, version, whether it came from a URL or a
    local path (pip's direct_url.json) rather than an index, and where its .dist-info is."""
    found = []
    for site in sorted(glob.glob(os.path.join(glob.escape(directory), "lib", "python*", "site-packages"))):
        for entry in sorted(os.listdir(site)):
            info = os.path.join(site, entry)
            if not entry.endswith(".dist-info") or not os.path.isdir(info):
                continue
            try:
                with open(os.path.join(info, "METADATA"), encoding="utf-8", errors="replace") as f:
                    headers = email.parser.HeaderParser().parsestr(f.read(1 << 16))
            except OSError:
                continue
            found.append({"name": headers.get("Name", ""), "version": headers.get("Version", ""),
                          "direct": os.path.exists(os.path.join(info, "direct_url.json")),
                          "site": site, "dist_info": entry})
    return found


def _listed(directory):
    if not os.path.isdir(directory):
        return []  # a server provisioned before the directory existed
    return [{k: d[k] for k in ("name", "version", "direct")} for d in _installed(directory)]


def _prune(directory, touched):
    """Remove each directory in `touched`, and its parents up to the top of `directory`, once it holds
    nothing but a byte-code cache (deepest first)."""
    for path in sorted(touched, key=lambda p: -p.count(os.sep)):
        while path.startswith(directory + os.sep) and os.path.isdir(path) and \
                not [e for e in os.listdir(path) if e != "__pycache__"]:
            shutil.rmtree(path, ignore_errors=True)
            path = os.path.dirname(path)


def _remove(directory, wanted):
    """Delete each (name, version) of `wanted` the way pip would: every file its RECORD lists (inside
    `directory` only), then its .dist-info; returns the NAME==VERSION removed."""
    directory = os.path.realpath(directory)
    removed = []
    for d in _installed(directory):
        if [_canonical(d["name"]), d["version"]] not in [[_canonical(n), v] for n, v in wanted]:
            continue
        info = os.path.join(d["site"], d["dist_info"])
        try:
            with open(os.path.join(info, "RECORD"), newline="", encoding="utf-8") as f:
                paths = [row[0] for row in csv.reader(f) if row]
        except OSError:
            paths = []
        touched = set()
        for rel in paths:
            path = os.path.normpath(os.path.join(d["site"], rel))
            if path.startswith(directory + os.sep) and (os.path.islink(path) or os.path.isfile(path)):
                os.unlink(path)
                touched.add(os.path.dirname(path))
        shutil.rmtree(info, ignore_errors=True)
        _prune(d["site"], touched - {d["site"]})
        removed.append(f"{d['name']}=={d['version']}")
    return removed


def user_packages(directory, account):
    """What notebooks installed under the user base `directory` (JSON [{name, version, direct}]), read as
    `account`."""
    print(json.dumps(_as_account(account, _listed, directory)))


def forget_user_packages(directory, account):
    """Delete from `directory` the packages stdin names (JSON [[name, version], ...]: those `rebuild
    --bake` put into the image), as `account`; prints the NAME==VERSION removed (JSON)."""
    wanted = [[str(n), str(v)] for n, v in json.loads(sys.stdin.read())]
    print(json.dumps(_as_account(account, _remove, directory, wanted)))


def digest(mode, record_path, inputs, acme_config, acme_status, acme_timer):
    """`up`'s fast path (appliance/digest.py), with the watch list (JSON) on stdin. "record": keep the
    inputs digest and what is observed now in record_path (root, 0600). "check": print {"same", "why"}:
    same when the inputs and every observation match the record and the appliance is healthy: the notebook
    container healthy, HTTPS asking for the login and, with --tls acme, the last certificate attempt good
    (after a failed one, the same `up` asks the CA again)."""
    watch = json.loads(sys.stdin.read())
    if mode == "record":  # (its directory first: it may be one of the paths observed)
        os.makedirs(os.path.dirname(record_path), mode=0o755, exist_ok=True)
    seen, health = observe(watch)
    if mode == "record":
        _replace(record_path, json.dumps({"inputs": inputs, "seen": seen}, indent=1).encode(), "600", "root")
        print("{}")
        return
    try:
        with open(record_path) as f:
            last = json.load(f)
    except (OSError, ValueError):
        last = None
    differ = sorted(k for k in set(seen) | set(last["seen"]) if last["seen"].get(k) != seen.get(k)) if last else []
    if last is None:
        why = "no record of a full run on this server"
    elif last.get("inputs") != inputs:
        why = "the settings, files, image or roles differ from the last run's"
    elif differ:
        why = "the server differs from the last run: " + ", ".join(differ[:5]) + (" ..." if len(differ) > 5 else "")
    else:
        unhealthy = [f"{name} is {state}" for name, state in health.items() if state not in ("healthy", "none")]
        certificate = _acme(acme_config, acme_status, acme_timer)
        if certificate and not (certificate["last"] or {}).get("ok"):
            unhealthy.append("the last ACME certificate attempt failed")
        https = _https_answers()
        if https != "login required":
            unhealthy.append(f"HTTPS: {https}")
        why = "the appliance is not healthy: " + ", ".join(unhealthy) if unhealthy else ""
    print(json.dumps({"same": not why, "why": why}))


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    commands = {"backup": backup, "restore": restore, "status": status, "layers": layers, "install": install,
                "tokens": tokens, "disks": lambda *paths: print(json.dumps(disks(paths))), "acme": acme,
                "acme-directory": acme_directory, "user_packages": user_packages,
                "forget_user_packages": forget_user_packages, "digest": digest, "delivery": delivery}
    commands[command](*args)
