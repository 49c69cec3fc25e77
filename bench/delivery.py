#!/usr/bin/env python3
"""Cold image delivery over a slow link: how long the notebook image takes to reach a server whose uplink
from the operator is 20 Mbit/s (or any --mbit), per way of compressing the stream.

    python3 bench/delivery.py [--mbit 20 100] [--methods gzip-1 zstd-3 zstd-12]

Needs the local droplet (`python3 provision.py up`). The link: Linux's token bucket filter on the host's
end of the droplet's network interface (what goes into the droplet is shaped; removed again at the end).
For each method the image `up` would send to a new server (`docker save` of the whole image) is compressed
here (time and size measured), then sent over the shaped SSH connection into the droplet, which
decompresses it as `docker load` would read it (time measured), and discarded there. `docker load` itself
is not in the figure: it is the same for every method. Prints JSON (also bench/results/delivery.json).
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance import bootstrap, droplet, engine, images  # noqa: E402
from appliance.ssh import Target  # noqa: E402
from appliance.state import State  # noqa: E402
from bench.saved import save  # noqa: E402

METHODS = {  # name: (compress here, decompress there)
    "gzip-1": (["gzip", "-1", "-c"], "gzip -d -c"),  # what ship.py sends today (zlib level 1)
    "zstd-3": (["zstd", "-3", "-T0", "-q", "-c"], "zstd -d -q -c"),
    "zstd-12": (["zstd", "-12", "-T0", "--long=27", "-q", "-c"], "zstd -d -q -c --long=27"),
}


def host_interface(container=droplet.NAME):
    """The host's end of a droplet's eth0 (a veth)."""
    index = subprocess.run(["docker", "exec", container, "cat", "/sys/class/net/eth0/iflink"],
                           capture_output=True, text=True, check=True).stdout.strip()
    for line in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout.splitlines():
        number, name = line.split(":")[:2]
        if number.strip() == index:
            return name.strip().split("@")[0]
    raise SystemExit(f"the network interface of {container} was not found")


def shape(interface, mbit):
    subprocess.run(["tc", "qdisc", "del", "dev", interface, "root"], capture_output=True)
    if mbit:
        subprocess.run(["tc", "qdisc", "add", "dev", interface, "root", "tbf", "rate", f"{mbit}mbit",
                        "burst", "32kbit", "latency", "100ms"], check=True)


def droplet_target(control_dir):
    """The local droplet as `up` reaches it: ssh.Target with the key, known_hosts and login of the local state."""
    state = State(ROOT / ".appliance" / "local")
    return Target("127.0.0.1", droplet.PORTS[22], state.login() or "root", str(state.file(droplet.KEY)),
                  str(state.known_hosts), control_dir)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mbit", type=int, nargs="+", default=[20, 100])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = p.parse_args()
    bootstrap.apt_install(["zstd", "iproute2"], "The delivery benchmark")
    subprocess.run(["docker", "exec", droplet.NAME, "sh", "-c", "command -v zstd || apt-get install -y -q zstd"],
                   check=True, capture_output=True)
    tag = images.tag("scipy")
    results = {"image": tag, "image_mb": round(engine.client().images.get(tag).attrs["Size"] / 1e6), "runs": []}
    interface = host_interface()
    with tempfile.TemporaryDirectory(prefix="appliance-delivery-") as work:
        target = droplet_target(work)
        saved = Path(work) / "image.tar"
        with saved.open("wb") as out:
            for chunk in engine.client().api.get_image(tag, chunk_size=1 << 20):
                out.write(chunk)
        results["tar_mb"] = round(saved.stat().st_size / 1e6)
        try:
            for name in args.methods:
                compress, decompress = METHODS[name]
                packed = Path(work) / f"image.{name}"
                started = time.monotonic()
                with saved.open("rb") as src, packed.open("wb") as dst:
                    subprocess.run(compress, stdin=src, stdout=dst, check=True)
                compress_s = time.monotonic() - started
                for mbit in args.mbit:
                    shape(interface, mbit)
                    started = time.monotonic()
                    with packed.open("rb") as src:
                        r = subprocess.run(target.argv(f"{decompress} | wc -c"), stdin=src, capture_output=True,
                                           text=True)
                    sent_s = time.monotonic() - started
                    if r.returncode != 0 or int(r.stdout.strip() or 0) != saved.stat().st_size:
                        raise SystemExit(f"{name}: the stream did not arrive whole: {r.stderr.strip()[-500:]}")
                    results["runs"].append({
                        "method": name, "mbit": mbit, "sent_mb": round(packed.stat().st_size / 1e6),
                        "compress_s": round(compress_s, 1), "transfer_and_decompress_s": round(sent_s, 1),
                        # compression runs while the stream goes out: the slower of the two decides
                        "delivery_s": round(max(sent_s, compress_s), 1)})
                    print(json.dumps(results["runs"][-1]), flush=True)
                packed.unlink()
        finally:
            shape(interface, 0)
            target.close()
    save("delivery", results)


if __name__ == "__main__":
    bootstrap.reexec_in_venv(__file__, extras=("test", "bench"))
    main()
