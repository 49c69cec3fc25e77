#!/usr/bin/env python3
"""P6: image sizes, full build time without cache, rebuild time after adding one package.

    .venv/bin/python bench/images.py [--ca-bundle /etc/ssl/certs/ca-certificates.crt] [--no-compressed]

Measures, for the scipy image: its uncompressed size (Docker's Size, all layers) and base's; its compressed
size (every layer gzip-compressed at level 6, as a registry stores them, so it compares with the figures
registries show); the build of base + scipy from nothing (no layer cache; pip keeps no cache in the image, so
every wheel is downloaded again; the root image debian:bookworm-slim is already there and not counted);
the rebuild after adding one package (tabulate==0.9.0, the last layer only); the largest layers and the
largest packages in /opt/venv. Prints one JSON object; bench/run.py folds it into docs/benchmarks.md.
"""
import argparse
import json
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance import engine, images  # noqa: E402

VENV_TOP = ("cd /opt/venv/lib/python3.11/site-packages && du -sm -- */ 2>/dev/null | sort -rn | head -15")


def timed(fn):
    started = time.monotonic()
    fn()
    return round(time.monotonic() - started, 1)


def compressed_bytes(client, ref):
    """Bytes of `docker save` of ref, gzip level 6 (registries store each layer so; the tar framing and the
    config add little)."""
    packer, total = zlib.compressobj(6, zlib.DEFLATED, 31), 0
    for chunk in client.images.get(ref).save(chunk_size=1 << 20):
        total += len(packer.compress(chunk))
    return total + len(packer.flush())


def largest_layers(client, ref, count=8):
    history = client.api.history(ref)
    layers = sorted((layer for layer in history if layer["Size"] > 0), key=lambda layer: -layer["Size"])
    return [{"mb": round(layer["Size"] / 1e6), "step": layer["CreatedBy"][-100:]} for layer in layers[:count]]


def venv_top(client, ref):
    out = client.containers.run(ref, ["sh", "-c", VENV_TOP], entrypoint=[], remove=True).decode()
    return [{"mb": int(size), "package": name.rstrip("/")} for size, name in (line.split("\t") for line in
                                                                             out.splitlines())]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ca-bundle")
    p.add_argument("--no-compressed", action="store_true", help="skip the compressed size (gzips the whole image)")
    args = p.parse_args()
    client = engine.client()
    quiet = {"ca_bundle": args.ca_bundle, "say": lambda m: None}
    full = timed(lambda: images.build("scipy", nocache=True, **quiet))  # every layer of ours rebuilt
    sizes = {name: client.images.get(images.tag(name)).attrs["Size"] for name in ("base", "scipy")}
    result = {"base_mb": round(sizes["base"] / 1e6), "scipy_mb": round(sizes["scipy"] / 1e6),
              "full_build_s": full,
              "largest_layers": largest_layers(client, images.tag("scipy")),
              "venv_top": venv_top(client, images.tag("scipy"))}
    if not args.no_compressed:
        result["scipy_compressed_mb"] = round(compressed_bytes(client, images.tag("scipy")) / 1e6)
    result["one_package_rebuild_s"] = timed(lambda: images.build("scipy", packages=("tabulate==0.9.0",), **quiet))
    images.build("scipy", **quiet)  # back to the plain image (from the cache)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
