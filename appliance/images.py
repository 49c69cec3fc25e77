"""The data-science images: built with the Docker SDK, described by a manifest.

Each image is built FROM its parent (PARENTS), chained through the
Dockerfiles' BASE_IMAGE argument. Every image carries a versions manifest
(Python, every package, the parent and root images), written by a RUN step to
/opt/appliance/manifest.json and copied, as read back from a throwaway
container, into the label LABEL by a second one-line build.
"""
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import docker

from . import bootstrap, config, console, engine, layout, render
from .errors import ImageError

IMAGES = Path(__file__).resolve().parent.parent / "images"
ROOT_IMAGE = "debian:bookworm-slim"
PARENTS = {"base": ROOT_IMAGE, "scipy": "base"}  # a parent that is not a key here is a root image
LABEL = "org.appliance.manifest"
SOURCE = "org.appliance.source"  # what the image is built from (source_key): the same wherever it is built
MANIFEST_PATH = "/opt/appliance/manifest.json"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBOOTSTRAP_CACHE = Path("/var/cache/appliance")
# Where hosts keep the CAs they trust: Debian/Ubuntu, then RHEL/Fedora (else certifi's bundle).
HOST_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
# NAME or NAME==VERSION: nothing the shell of the Dockerfile's RUN would interpret.
_PACKAGE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?(==[A-Za-z0-9][A-Za-z0-9.+!_-]*)?$")
_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)")
TAIL = 30  # log lines shown when a build fails


def is_package(spec):
    """Whether spec is NAME or NAME==VERSION that the Dockerfile's RUN may take as it is."""
    return bool(_PACKAGE.match(spec))


def tag(name):
    return f"appliance/{name}:latest"


def chain(name):
    """The images to build for `name`, parents first."""
    if name not in PARENTS:
        raise ImageError(f"unknown image {name!r}; known: {', '.join(PARENTS)}")
    names = [name]
    while PARENTS[names[0]] in PARENTS:
        names.insert(0, PARENTS[names[0]])
    return names


class Progress:
    """The build display: the current step N/M, kept alive by a ticker during long steps (a spinner on
    a terminal, a line every few seconds elsewhere). Keeps the full log and shows its tail on failure."""

    def __init__(self, out=None):
        self.out = out or sys.stdout
        self.tty, self.log, self.name, self.ticker = self.out.isatty(), [], "", None

    def start(self, name):
        self.done()
        self.name = name
        self.ticker = console.Ticker(f"[{name}] starting the build", self.out).start()

    def __call__(self, line):
        self.log.append(line)
        step = _STEP.match(line)
        if step:
            text = f"[{self.name}] step {step[1]}/{step[2]}: {step[3][:100]}"
            self.ticker.update(text)
            if not self.tty:
                self.out.write(text + "\n")
                self.out.flush()

    def done(self):
        if self.ticker:
            self.ticker.stop()
            self.ticker = None

    def fail(self, detail):
        self.done()
        self.out.write("\n".join(self.log[-TAIL:]) + "\n")
        if "CERTIFICATE_VERIFY_FAILED" in "\n".join(self.log):
            detail += (" (TLS verification failed: behind a TLS-intercepting proxy, pass --ca-bundle PATH "
                       "with the proxy's CA)")
        raise ImageError(f"building {self.name} failed: {detail}")


def _context(name, directory, ca_bundle):
    shutil.copytree(IMAGES / name, directory, dirs_exist_ok=True)
    try:
        ca = Path(ca_bundle).expanduser().read_bytes() if ca_bundle else b""
    except OSError as exc:
        raise ImageError(f"cannot read the CA bundle {ca_bundle}: {exc.strerror}") from None
    (Path(directory) / "extra-ca.crt").write_bytes(ca)
    if name == "base":  # the image's default Jupyter config is the one the server gets
        context = render.template_context(config.Config())
        text = render.environment().get_template("jupyter_server_config.py.j2").render(context)
        (Path(directory) / "jupyter_server_config.py").write_text(text)


def _stream(api, progress, **kwargs):
    """Run one low-level build; returns the image id."""
    image_id = None
    try:
        for chunk in api.build(decode=True, rm=True, forcerm=True, **kwargs):
            for line in chunk.get("stream", "").splitlines():
                progress(line)
            if "error" in chunk:
                progress.fail(chunk["error"].strip().splitlines()[-1])
            image_id = chunk.get("aux", {}).get("ID", image_id)
    except docker.errors.APIError as exc:
        progress.fail(exc.explanation or str(exc))
    progress.done()
    return image_id


def build_directory(client, name, buildargs, ca_bundle=None, image_tag=None, progress=None, nocache=False):
    """Build images/<name>/ with the low-level API; returns the image id."""
    progress = progress or Progress()
    progress.start(name)
    with tempfile.TemporaryDirectory(prefix=f"appliance-{name}-") as directory:
        _context(name, directory, ca_bundle)
        return _stream(client.api, progress, path=directory, buildargs=buildargs, tag=image_tag, nocache=nocache)


def source_key(name, root_id, ca_bundle=None, packages=()):
    """SHA-256 of everything an image is built from: the build contexts of its chain (Dockerfiles, locks,
    the CA bundle, the rendered Jupyter config), the root image's id and the extra packages. Two images
    with the same key hold the same software, whichever engine built them (`up` builds on the server
    or here, delivery.py)."""
    h = hashlib.sha256(json.dumps({"root": root_id, "packages": list(packages), "socket": layout.IMAGE_SOCKET,
                                   "user_packages": layout.IMAGE_USER_PACKAGES}).encode())
    for each in chain(name):
        with tempfile.TemporaryDirectory(prefix=f"appliance-{each}-") as directory:
            _context(each, directory, ca_bundle)
            for path in sorted(Path(directory).rglob("*")):
                if path.is_file():
                    h.update(f"\0{each}/{path.relative_to(directory)}\0".encode() + path.read_bytes())
    return h.hexdigest()


def _described(client, ref):
    return f"{ref} ({client.images.get(ref).id[:19]})"


def _build_one(client, name, parent, root, ca_bundle, packages, progress, nocache, key):
    args = {"BASE_IMAGE": parent, "EXTRA_PACKAGES": " ".join(packages),
            "MANIFEST_PARENT": _described(client, parent), "MANIFEST_ROOT": _described(client, root)}
    if name == "base":
        args["APPLIANCE_JUPYTER_SOCKET"] = layout.IMAGE_SOCKET
        args["APPLIANCE_USER_PACKAGES"] = layout.IMAGE_USER_PACKAGES
    built = build_directory(client, name, args, ca_bundle, progress=progress, nocache=nocache)
    try:
        text = client.containers.run(built, ["cat", MANIFEST_PATH], entrypoint=[], remove=True)
    except docker.errors.DockerException as exc:
        raise ImageError(f"cannot read the versions manifest of {name}: {exc}") from None
    label = json.dumps(json.loads(text), separators=(",", ":"), sort_keys=True)
    progress.start(f"{name} label")
    _stream(client.api, progress, fileobj=io.BytesIO(f"FROM {built}\n".encode()), tag=tag(name),
            labels={LABEL: label, SOURCE: key})
    return tag(name)


def _exists(client, ref):
    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def build(name="scipy", base_image=None, ca_bundle=None, packages=(), progress=None, say=print, nocache=False,
          client=None):
    """Build `name` and its parents (cached layers unless nocache) on `client`'s engine (this machine's by
    default); returns the tag of `name`.

    base_image replaces the root image (debian:bookworm-slim, made when missing); ca_bundle is the
    CA bundle (PEM) trusted inside the build: by default the host's own (see trusted_cas), "none" for
    the image's own store only; packages (NAME or NAME==VERSION) are pip-installed in a small last
    layer of `name` only.
    """
    for package in packages:
        if not is_package(package):
            raise ImageError(f"{package!r} is not a package requirement like NAME or NAME==VERSION")
    names = chain(name)
    root = base_image or PARENTS[names[0]]
    client = client or engine.client()
    ensure_root_image(client, root, say)
    root_id = client.images.get(root).id
    bundle = trusted_cas(ca_bundle)
    say(f"Builds trust the CA bundle {bundle} (--ca-bundle PATH for another, --ca-bundle none for the "
        "image's own CAs only)" if bundle else "Builds trust the image's own CAs only (--ca-bundle none)")
    progress = progress or Progress()
    parent = root
    for each in names:
        say(f"Building {tag(each)} from {parent}")
        extra = packages if each == name else ()
        parent = _build_one(client, each, parent, root, bundle, extra, progress, nocache,
                            source_key(each, root_id, bundle, extra))
    return parent


def trusted_cas(choice=None):
    """The CA bundle a build trusts: `choice` (a path, or "none"), by default what this host trusts.

    A host behind a TLS-intercepting proxy trusts the proxy's CA, so builds (pip inside them) work
    where pip on the host works. The bundle also stays trusted in the running image (README, Requirements).
    """
    if choice is not None:
        return None if choice == "none" else choice
    for path in HOST_CA_BUNDLES:
        if os.path.isfile(path):
            return path
    import certifi  # installed with docker's requests
    return certifi.where()


def ensure_root_image(client, ref=ROOT_IMAGE, say=print):
    """The one way a root image gets here: present, else pulled, else (for debian:bookworm-slim, when no
    registry answers) made with debootstrap. Every build (notebook images, the local droplet) uses it."""
    if _exists(client, ref):
        return
    try:
        with console.working(f"Pulling {ref}", say):
            client.images.pull(ref)
        return
    except docker.errors.APIError as exc:
        if ref != ROOT_IMAGE:
            raise ImageError(f"the base image {ref} is not here and cannot be pulled: {exc.explanation}") from None
    say(f"Cannot pull {ref} (no registry answers): making it with debootstrap instead")
    debootstrap_image(client, ref, say)


def debootstrap_image(client, ref=ROOT_IMAGE, say=print, cache=DEBOOTSTRAP_CACHE):
    """Make `ref` from a Debian 12 minbase debootstrap; the root tarball is kept in `cache`."""
    cache = Path(cache)
    tarball = cache / "bookworm-minbase.tar"
    if not tarball.exists():
        bootstrap.apt_install(["debootstrap"], f"making {ref}")
        root = cache / "bookworm-root"
        cache.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)
        try:
            with console.working(f"Making {ref} with debootstrap (about a minute; kept in {cache})", say):
                subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(root), DEBIAN_MIRROR],
                               check=True, capture_output=True)
                subprocess.run(["tar", "-C", str(root), "-cf", f"{tarball}.part", "."], check=True)
        except subprocess.CalledProcessError as exc:
            raise ImageError(f"debootstrap could not make {ref}: "
                             f"{(exc.stderr or b'').decode(errors='replace').strip()[-300:]}") from None
        finally:
            shutil.rmtree(root, ignore_errors=True)
        os.replace(f"{tarball}.part", tarball)
    repository, tag_name = ref.rsplit(":", 1)
    with console.working(f"Importing {ref} into the Docker engine", say):
        client.api.import_image_from_file(str(tarball), repository=repository, tag=tag_name,
                                          changes=['CMD ["bash"]'])


def manifest(name_or_ref):
    """The versions manifest of a built image (a name in PARENTS or any image reference)."""
    known = name_or_ref in PARENTS
    ref = tag(name_or_ref) if known else name_or_ref
    try:
        image = engine.client().images.get(ref)
    except (docker.errors.ImageNotFound, docker.errors.NullResource):
        hint = (f"; run: provision.py build --image {name_or_ref}" if known
                else f" (known images: {', '.join(PARENTS)})")
        raise ImageError(f"image {ref} is not built here{hint}") from None
    except docker.errors.APIError as exc:
        raise ImageError(f"cannot inspect {ref}: {exc.explanation}") from None
    label = (image.labels or {}).get(LABEL)
    if not label:
        raise ImageError(f"image {ref} carries no versions manifest (was it built by provision.py?)")
    return {"image": ref, "id": image.id, "size": image.attrs["Size"], **json.loads(label)}


def format_manifest(m):
    lines = [f"image:   {m['image']} ({m['id'][:19]}, {m['size'] / 1e6:.0f} MB)",
             f"parent:  {m['parent_image']}", f"base:    {m['base_image']}", f"python:  {m['python']}",
             f"packages ({len(m['packages'])}):"]
    lines += [f"  {name}=={version}" for name, version in m["packages"].items()]
    return "\n".join(lines)
