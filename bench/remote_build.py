#!/usr/bin/env python3
"""The other way to deliver the image over a slow link: build it on the server, which fetches the wheels
itself, so that only the root image and the build contexts cross the operator's link.

    python3 bench/remote_build.py [--mbit 20]

Needs the local droplet (`python3 provision.py up`). Only what goes to the droplet's SSH port is shaped
(an htb class on the host end of its veth, filtered on destination port 22): the droplet's own downloads
(PyPI, Debian) are not, as a cloud server's are not. The build runs with images.build_directory against the
droplet's Docker engine, reached through a unix socket here that forwards each connection over SSH to the
server's socket (socat on both ends, sudo there); it builds base and scipy without cache under tags of its
own (the appliance's image is left alone). The root image (debian:bookworm-slim) is sent first, gzip -1, as
ship.py would. Prints JSON (also bench/results/remote_build.json).
"""
import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402

from appliance import bootstrap, droplet, engine, images, layout  # noqa: E402
from bench.delivery import droplet_target, host_interface  # noqa: E402
from bench.saved import save  # noqa: E402

TAG = "appliance-remote-build/{}:latest"


def shape_ssh(interface, mbit):
    """Limit what goes to the droplet's port 22 to mbit (0: remove)."""
    subprocess.run(["tc", "qdisc", "del", "dev", interface, "root"], capture_output=True)
    if not mbit:
        return
    for command in (["qdisc", "add", "dev", interface, "root", "handle", "1:", "htb", "default", "20"],
                    ["class", "add", "dev", interface, "parent", "1:", "classid", "1:10", "htb", "rate",
                     f"{mbit}mbit", "ceil", f"{mbit}mbit"],
                    ["class", "add", "dev", interface, "parent", "1:", "classid", "1:20", "htb", "rate", "10gbit"],
                    ["filter", "add", "dev", interface, "protocol", "ip", "parent", "1:", "prio", "1", "u32",
                     "match", "ip", "dport", "22", "0xffff", "flowid", "1:10"]):
        subprocess.run(["tc", *command], check=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mbit", type=int, default=20)
    p.add_argument("--ca-bundle", default="/etc/ssl/certs/ca-certificates.crt")
    args = p.parse_args()
    bootstrap.apt_install(["socat", "iproute2"], "The remote build benchmark")
    subprocess.run(["docker", "exec", droplet.NAME, "sh", "-c", "command -v socat || apt-get install -y -q socat"],
                   check=True, capture_output=True)
    interface, figures = host_interface(), {"mbit": args.mbit}
    with tempfile.TemporaryDirectory(prefix="appliance-remote-build-") as work:
        sock, target = Path(work) / "docker.sock", droplet_target(work)
        relay = " ".join(shlex.quote(a) for a in target.argv("sudo -n socat STDIO UNIX-CONNECT:/var/run/docker.sock"))
        forward = subprocess.Popen(["socat", f"UNIX-LISTEN:{sock},fork,mode=600", f"EXEC:{relay}"],
                                   stderr=subprocess.DEVNULL)
        try:
            while not sock.exists():
                time.sleep(0.1)
            server = docker.DockerClient(base_url=f"unix://{sock}", timeout=3600)
            for name in ("scipy", "base"):  # from nothing: no earlier run's images
                try:
                    server.images.remove(TAG.format(name), force=True)
                except docker.errors.ImageNotFound:
                    pass
            shape_ssh(interface, args.mbit)
            started = time.monotonic()
            if not images._exists(server, images.ROOT_IMAGE):
                with open(Path(work) / "root.tar.gz", "wb") as out:
                    saved = subprocess.Popen(["docker", "save", images.ROOT_IMAGE], stdout=subprocess.PIPE)
                    subprocess.run(["gzip", "-1"], stdin=saved.stdout, stdout=out, check=True)
                    saved.wait()
                figures["root_image_mb"] = round((Path(work) / "root.tar.gz").stat().st_size / 1e6, 1)
                with open(Path(work) / "root.tar.gz", "rb") as src:
                    subprocess.run(target.argv("sudo -n docker load -q"), stdin=src, check=True, capture_output=True)
            figures["root_image_s"] = round(time.monotonic() - started, 1)
            parent = images.ROOT_IMAGE
            for name in ("base", "scipy"):
                step = time.monotonic()
                buildargs = {"BASE_IMAGE": parent, "EXTRA_PACKAGES": "", "MANIFEST_PARENT": parent,
                             "MANIFEST_ROOT": images.ROOT_IMAGE}
                if name == "base":
                    buildargs.update(APPLIANCE_JUPYTER_SOCKET=layout.IMAGE_SOCKET,
                                     APPLIANCE_USER_PACKAGES=layout.IMAGE_USER_PACKAGES)
                images.build_directory(server, name, buildargs, args.ca_bundle, image_tag=TAG.format(name),
                                       nocache=True)
                figures[f"build_{name}_s"] = round(time.monotonic() - step, 1)
                parent = TAG.format(name)
            figures["total_s"] = round(time.monotonic() - started, 1)
            figures["image_mb"] = round(server.images.get(TAG.format("scipy")).attrs["Size"] / 1e6)
            figures["local_image_mb"] = round(engine.client().images.get(images.tag("scipy")).attrs["Size"] / 1e6)
        finally:
            shape_ssh(interface, 0)
            forward.terminate()
            target.close()
    save("remote_build", figures)


if __name__ == "__main__":
    bootstrap.reexec_in_venv(__file__, extras=("test", "bench"))
    main()
