"""The data-science images: built with the Docker SDK, described by a manifest.

Each image is built FROM its parent (PARENTS), chained through the
Dockerfiles' BASE_IMAGE argument. Every image carries a versions manifest
(Python, every package, the base image) as /opt/appliance/manifest.json and
as the label LABEL.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import docker

from . import bootstrap, config, engine, render
from .errors import ImageError  # noqa: F401  (re-exported for callers)

IMAGES = Path(__file__).resolve().parent.parent / "images"
ROOT_IMAGE = "debian:bookworm-slim"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBOOTSTRAP_CACHE = Path("/var/cache/appliance")
PARENTS = {"base": None, "scipy": "base"}
LABEL = "org.appliance.manifest"
MANIFEST_PATH = "/opt/appliance/manifest.json"
_PACKAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?"
                      r"((==|>=|<=|~=|!=|<|>)[A-Za-z0-9.*+!_-]+)?$")
_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)")


def tag(name):
    return f"appliance/{name}:latest"


def chain(name):
    if name not in PARENTS:
        raise ImageError(f"unknown image {name!r}; known: {', '.join(PARENTS)}")
    names = [name]
    while PARENTS[names[0]]:
        names.insert(0, PARENTS[names[0]])
    return names


class Progress:
    """One updating line on a terminal (plain lines otherwise); the full log kept for failures."""

    def __init__(self, name, out=sys.stderr):
        self.name, self.out, self.tty, self.log = name, out, out.isatty(), []

    def __call__(self, text):
        self.log.append(text)
        step = _STEP.match(text)
        if step:
            line = f"[{self.name}] step {step[1]}/{step[2]}: {step[3][:100]}"
            if self.tty:
                self.out.write("\r\033[K" + line[: shutil.get_terminal_size().columns - 1])
            else:
                self.out.write(line + "\n")
            self.out.flush()

    def done(self):
        if self.tty:
            self.out.write("\n")


def _context(name, directory, ca_bundle):
    shutil.copytree(IMAGES / name, directory, dirs_exist_ok=True)
    try:
        (Path(directory) / "extra-ca.crt").write_bytes(Path(ca_bundle).expanduser().read_bytes() if ca_bundle else b"")
    except OSError as exc:
        raise ImageError(f"cannot read the CA bundle {ca_bundle}: {exc.strerror}") from None
    if name == "base":  # the image's default Jupyter config is the one the server gets
        cfg = config.Config()
        text = render.environment().get_template("jupyter_server_config.py.j2").render(render.template_context(cfg))
        (Path(directory) / "jupyter_server_config.py").write_text(text)


def _stream(api, progress, **kwargs):
    """Run one low-level build; returns the image id."""
    image_id = None
    for chunk in api.build(decode=True, rm=True, forcerm=True, **kwargs):
        if "stream" in chunk:
            for line in chunk["stream"].splitlines():
                progress(line)
        if "error" in chunk:
            progress.done()
            log = "\n".join(progress.log[-30:])
            print(log, file=sys.stderr)
            detail = chunk["error"].strip().splitlines()[-1]
            if "CERTIFICATE_VERIFY_FAILED" in log:
                detail += " (TLS verification failed: behind a TLS-intercepting proxy, pass --ca-bundle PATH)"
            raise ImageError(f"building {progress.name} failed: {detail}")
        if "aux" in chunk and "ID" in chunk["aux"]:
            image_id = chunk["aux"]["ID"]
    return image_id


def build_directory(client, name, buildargs, ca_bundle=None, image_tag=None, progress=None):
    """Build images/<name>/ with the low-level API; returns the image id."""
    progress = progress or Progress(name)
    with tempfile.TemporaryDirectory(prefix=f"appliance-{name}-") as directory:
        _context(name, directory, ca_bundle)
        built = _stream(client.api, progress, path=directory, buildargs=buildargs, tag=image_tag)
    progress.done()
    return built


def _build_one(client, name, parent, ca_bundle, packages):
    progress = Progress(name)
    base = f"{parent} ({client.images.get(parent).id[:19]})"
    built = build_directory(client, name, {"BASE_IMAGE": parent, "EXTRA_PACKAGES": " ".join(packages),
                                           "MANIFEST_BASE": base}, ca_bundle, progress=progress)
    manifest = json.loads(client.containers.run(built, ["cat", MANIFEST_PATH], entrypoint=[], remove=True))
    with tempfile.TemporaryDirectory(prefix=f"appliance-{name}-label-") as directory:
        (Path(directory) / "Dockerfile").write_text(f"FROM {built}\n")
        _stream(client.api, progress, path=directory, tag=tag(name),
                labels={LABEL: json.dumps(manifest, separators=(",", ":"), sort_keys=True)})
    progress.done()
    return tag(name)


def _exists(client, ref):
    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def build(name="scipy", base_image=None, ca_bundle=None, packages=(), say=print):
    """Build `name` and its parents; returns the tag of `name`."""
    for package in packages:
        if not _PACKAGE.match(package):
            raise ImageError(f"{package!r} is not a package requirement like NAME or NAME==VERSION")
    names = chain(name)
    client = engine.client()
    parent = base_image or ROOT_IMAGE
    if not _exists(client, parent):
        ensure_root_image(client, parent, say)
    for each in names:
        say(f"Building {tag(each)} from {parent}")
        parent = _build_one(client, each, parent, ca_bundle, packages if each == name else ())
    return parent


def ensure_root_image(client, ref=ROOT_IMAGE, say=print):
    """Pull the root image; without a registry, make debian:bookworm-slim with debootstrap (cached)."""
    try:
        say(f"Pulling {ref}")
        client.images.pull(ref)
        return
    except docker.errors.APIError as exc:
        if ref != ROOT_IMAGE:
            raise ImageError(f"the base image {ref} is not here and cannot be pulled: {exc.explanation}") from None
    tarball = DEBOOTSTRAP_CACHE / "bookworm-minbase.tar"
    if not tarball.exists():
        say(f"No registry answers: making {ref} with debootstrap (about a minute, cached in {DEBOOTSTRAP_CACHE})")
        bootstrap.apt_install(["debootstrap"], f"making {ref}")
        root = DEBOOTSTRAP_CACHE / "bookworm-root"
        DEBOOTSTRAP_CACHE.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)
        try:
            subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(root), DEBIAN_MIRROR],
                           check=True, capture_output=True)
            subprocess.run(["tar", "-C", str(root), "-cf", f"{tarball}.part", "."], check=True)
        except subprocess.CalledProcessError as exc:
            raise ImageError(f"debootstrap could not make {ref}: {exc.stderr.decode(errors='replace')[-300:]}"
                             ) from None
        finally:
            shutil.rmtree(root, ignore_errors=True)
        os.replace(f"{tarball}.part", tarball)
    repository, tag_name = ref.split(":")
    client.api.import_image_from_file(str(tarball), repository=repository, tag=tag_name, changes=['CMD ["bash"]'])


def manifest(name_or_ref):
    ref = tag(name_or_ref) if name_or_ref in PARENTS else name_or_ref
    try:
        image = engine.client().images.get(ref)
    except (docker.errors.ImageNotFound, docker.errors.NullResource):
        raise ImageError(f"image {ref} is not built here; run: provision.py build --image {name_or_ref}") from None
    except docker.errors.APIError as exc:
        raise ImageError(f"cannot inspect {ref}: {exc.explanation}") from None
    label = (image.labels or {}).get(LABEL)
    if not label:
        raise ImageError(f"image {ref} carries no versions manifest (was it built by provision.py?)")
    return {"image": ref, "id": image.id, "size": image.attrs["Size"], **json.loads(label)}


def format_manifest(m):
    lines = [f"image:   {m['image']} ({m['id'][:19]}, {m['size'] / 1e6:.0f} MB)",
             f"base:    {m['base_image']}", f"python:  {m['python']}",
             f"packages ({len(m['packages'])}):"]
    lines += [f"  {name}=={version}" for name, version in m["packages"].items()]
    return "\n".join(lines)
