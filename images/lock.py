#!/usr/bin/env python3
"""Regenerate the images' pinned lock files from their requirements.in.

    .venv/bin/pip install uv==0.13.8 && .venv/bin/python images/lock.py

Each lock pins every package (transitive ones too) with hashes, for the
Python of the images (Debian 12: CPython 3.11, x86_64 glibc). Pins already in
a lock are kept unless requirements.in asks otherwise (uv prefers the existing
output file); delete a lock to take the newest versions. scipy's lock holds
only what scipy adds on top of base.
"""
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET = ["--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_28"]
HEADER = """\
# Fully pinned, with hashes, for CPython 3.11 on x86_64 (the image's Debian 12 Python).{extra}
# Do not edit: change requirements.in, then regenerate with
#   .venv/bin/pip install uv==0.13.8 && .venv/bin/python images/lock.py
"""


def compile_lock(name):
    subprocess.run([sys.executable, "-m", "uv", "pip", "compile", "--quiet", "--generate-hashes",
                    "--no-header", *TARGET, "requirements.in", "-o", "requirements.lock"],
                   cwd=HERE / name, check=True)


def packages(lines):
    """The lock's entries: lists of lines, each starting at a `name==version` line."""
    entries = []
    for line in lines:
        if line and not line.startswith((" ", "#")):
            entries.append([])
        if entries:
            entries[-1].append(line)
    return entries


def write(name, extra=""):
    lock = HERE / name / "requirements.lock"
    entries = packages(lock.read_text().splitlines())
    if name != "base":  # installed on top of base: drop what base already pins
        base_lock = (HERE / "base/requirements.lock").read_text().splitlines()
        base = {entry[0].split("==")[0] for entry in packages(base_lock)}
        entries = [entry for entry in entries if entry[0].split("==")[0] not in base]
    lock.write_text(HEADER.format(extra=extra) + "".join(line + "\n" for entry in entries for line in entry))


if __name__ == "__main__":
    compile_lock("base")
    write("base")
    compile_lock("scipy")
    write("scipy", "\n# Holds only what scipy adds on top of ../base/requirements.lock (its constraint).")
