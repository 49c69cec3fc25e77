#!/usr/bin/env python3
"""P6: image size, full build time without cache, rebuild time after adding one package.

    .venv/bin/python bench/images.py [--ca-bundle /etc/ssl/certs/ca-certificates.crt]

Prints one JSON object; bench/run.py folds it into docs/benchmarks.md.
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance import engine, images  # noqa: E402


def timed(fn):
    started = time.monotonic()
    fn()
    return round(time.monotonic() - started, 1)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ca-bundle")
    args = p.parse_args()
    client = engine.client()
    quiet = {"ca_bundle": args.ca_bundle, "say": lambda m: None}
    full = timed(lambda: images.build("scipy", nocache=True, **quiet))  # every layer of ours rebuilt
    sizes = {name: client.images.get(images.tag(name)).attrs["Size"] for name in ("base", "scipy")}
    one = timed(lambda: images.build("scipy", packages=("tabulate==0.9.0",), **quiet))
    images.build("scipy", **quiet)  # back to the plain image (from the cache)
    print(json.dumps({"base_mb": round(sizes["base"] / 1e6), "scipy_mb": round(sizes["scipy"] / 1e6),
                      "full_build_s": full, "one_package_rebuild_s": one}))


if __name__ == "__main__":
    main()
