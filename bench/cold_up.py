#!/usr/bin/env python3
"""A cold `up` over a slow uplink: a new server, nothing on it, reached through a link shaped to --mbit.

    python3 bench/cold_up.py [--mbit 20 100] [--build-on auto]

The server is a new droplet of its own (worker droplet index INDEX: its own Docker engine, no image), reached
as `up --host <its bridge address>` from a fresh state directory, so `up` does everything a new cloud server
needs: server.yml, the image (auto: built where the upload rate says, delivery.py), site.yml. Only what goes
to the server's SSH port is shaped (remote_build.py's shape_ssh), as on a home uplink; the server's own
downloads are not. The droplet and the state go afterwards. Prints JSON (also bench/results/cold_up.json);
`up`'s output, each line with the second it came, goes to bench/results/cold_up-<mbit>mbit.log.
"""
import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance import bootstrap, config, droplet  # noqa: E402
from bench.delivery import host_interface  # noqa: E402
from bench.remote_build import shape_ssh  # noqa: E402
from bench.saved import save  # noqa: E402

HIDE = re.compile(r"new password \S+")
INDEX = 9  # above config.MAX_LOCAL_WORKERS: never one of the cluster's worker droplets


def cold_up(mbit, build_on):
    with tempfile.TemporaryDirectory(prefix="appliance-cold-up-") as state_dir:
        cfg = config.Config(host="127.0.0.1", state_dir=state_dir)
        server = droplet.ensure(cfg, say=lambda m: None, index=INDEX)
        interface = host_interface(droplet.Spec(INDEX).name)
        try:
            shape_ssh(interface, mbit)
            started = time.monotonic()
            up = subprocess.Popen([sys.executable, str(ROOT / "provision.py"), "up", "--host", server["address"],
                                   "--ssh-key", server["key"], "--state-dir", state_dir, "--build-on", build_on],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  stdin=subprocess.DEVNULL)
            # each line with the second it came; the generated password (shown once) left out
            lines = [f"{time.monotonic() - started:6.1f} {HIDE.sub('new password (hidden)', line)}" for line in up.stdout]
            returncode, seconds = up.wait(), time.monotonic() - started
        finally:
            shape_ssh(interface, 0)
            droplet.remove_worker(INDEX, say=lambda m: None)
    output = "".join(lines)
    (ROOT / "bench" / "results" / f"cold_up-{mbit}mbit.log").write_text(output)
    if returncode != 0:
        raise SystemExit(f"up failed:\n{output[-3000:]}")
    steps = {"probe": r"Upload to the server: (\d+) Mbit/s", "built_on_server_s": r"Image built on the server in (\d+) s",
             "sent": r"Image loaded on the server: ([\d.]+ [kM]B) sent in (\d+) s", "ready_s": r"Ready in (\d+) s"}
    found = {name: re.search(pattern, output) for name, pattern in steps.items()}
    return {"mbit": mbit, "build_on": build_on, "cold_up_s": round(seconds, 1),
            **{name: m.group(1) if m.lastindex == 1 else m.groups() for name, m in found.items() if m},
            "built_on": "server" if found["built_on_server_s"] else "here"}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mbit", type=int, nargs="+", default=[20, 100])
    p.add_argument("--build-on", choices=config.BUILD_ON, default="auto")
    args = p.parse_args()
    bootstrap.apt_install(["iproute2"], "The cold up benchmark")
    save("cold_up", {"runs": [cold_up(mbit, args.build_on) for mbit in args.mbit]})


if __name__ == "__main__":
    bootstrap.reexec_in_venv(__file__, extras=("test", "bench"))
    main()
