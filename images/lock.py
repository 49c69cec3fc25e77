#!/usr/bin/env python3
"""Regenerate the images' pinned lock files from their requirements.in.

    .venv/bin/pip install uv==0.13.8 && .venv/bin/python images/lock.py

Each lock pins every package (transitive ones too) with hashes, for the
Python of the images (Debian 12: CPython 3.11, x86_64 glibc). scipy's lock
holds only what scipy adds on top of base.
"""
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET = ["--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_28"]


def compile_lock(name):
    image = HERE / name
    subprocess.run([sys.executable, "-m", "uv", "pip", "compile", "--quiet", "--generate-hashes",
                    "--no-header", *TARGET, "requirements.in", "-o", "requirements.lock"], cwd=image, check=True)


def drop_base_packages():
    """scipy installs on top of base: keep only the packages base does not already pin."""
    base = {line.split("==")[0] for line in (HERE / "base/requirements.lock").read_text().splitlines()
            if "==" in line and not line.startswith(" ")}
    kept, skip = [], False
    for line in (HERE / "scipy/requirements.lock").read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            skip = line.split("==")[0] in base
        if not skip:
            kept.append(line)
    (HERE / "scipy/requirements.lock").write_text("\n".join(kept) + "\n")


if __name__ == "__main__":
    compile_lock("base")
    compile_lock("scipy")
    drop_base_packages()
