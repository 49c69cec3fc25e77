"""Putting the notebook image on the server: `docker save`, minus the layers the server already holds,
gzipped into `docker load` over SSH, with a byte counter while it travels."""
import json
import os
import subprocess
import tarfile
import tempfile
import time
import zlib

from . import console, engine
from .errors import DeployError
from .server.archive import chain_ids
from .ssh import remote_json


class _GzipPipe:
    """A write-only file that gzips into a process's stdin and counts the bytes sent (shown by ticker)."""

    def __init__(self, stdin, ticker):
        self.stdin, self.gzip, self.sent, self.ticker = stdin, zlib.compressobj(1, zlib.DEFLATED, 31), 0, ticker

    def write(self, data):
        self._send(self.gzip.compress(data))
        return len(data)

    def close(self):
        self._send(self.gzip.flush())
        self.stdin.close()

    def _send(self, data):
        self.stdin.write(data)
        self.sent += len(data)
        self.ticker.update(f"Sending the image: {_size(self.sent)} sent")


def ship_image(target, tag, say):
    """Send the image to the server unless it has it: `docker save`, minus the layers the server holds.

    docker load skips reading a layer whose chain ID it already has, so only
    new layers travel (gzip level 1). Returns the number of bytes sent.
    """
    client = engine.client()
    image = client.images.get(tag)
    r = target.ssh(target.sudo(f"docker image inspect --format '{{{{.Id}}}}' {tag}"),
                   capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode == 0 and r.stdout.strip() == image.id:
        say(f"Image {tag} is already on the server ({image.id[:19]})")
        return 0
    have = set(remote_json(target, "layers"))
    started = time.monotonic()
    with tempfile.TemporaryFile() as saved, console.working(f"Saving {tag} for the transfer", say) as ticker:
        for chunk in client.api.get_image(tag, chunk_size=1 << 20):
            saved.write(chunk)
        saved.seek(0)
        with tarfile.open(fileobj=saved) as src:
            manifest = json.load(src.extractfile("manifest.json"))[0]
            diff_ids = json.load(src.extractfile(manifest["Config"]))["rootfs"]["diff_ids"]
            skip = {path for path, chain in zip(manifest["Layers"], chain_ids(diff_ids)) if chain in have}
            say(f"Sending image {tag} to the server: {len(manifest['Layers']) - len(skip)} of "
                f"{len(manifest['Layers'])} layers are new ({image.attrs['Size'] / 1e6:.0f} MB in all)")
            load = subprocess.Popen(target.argv(target.sudo("docker load -q")), stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            pipe = _GzipPipe(load.stdin, ticker)
            try:
                with tarfile.open(fileobj=pipe, mode="w|") as out:
                    for member in src:
                        if member.name in skip:
                            continue
                        data = src.extractfile(member)  # follows links: docker save links identical layers,
                        if member.issym() or member.islnk():  # and the layer linked to may have been skipped
                            member = tarfile.TarInfo(member.name)
                            member.size = data.seek(0, os.SEEK_END)
                            data.seek(0)
                        out.addfile(member, data)
                pipe.close()
            except BrokenPipeError:
                pass
            ticker.update("Loading the image on the server")
            err = load.stderr.read()
            returncode = load.wait()
    if returncode != 0:
        raise DeployError(f"loading the image on the server failed: {err.decode(errors='replace').strip()}")
    say(f"Image loaded on the server: {_size(pipe.sent)} sent in {time.monotonic() - started:.0f} s")
    return pipe.sent


def _size(n):
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"
