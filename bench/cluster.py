#!/usr/bin/env python3
"""The Dask cluster's benchmark: the same dask.array reduction on one worker and on two, in one run.

    python3 provision.py up --workers 2 && python3 bench/cluster.py [--gb 4]

Runs inside the notebook container of the local droplet (its Client() reaches the cluster with no
arguments), pins the computation to one worker and then lets it use both, best of three each, and prints
the figures as JSON (also in bench/results/cluster.json). On a machine whose cores the droplets share
(2 here), two workers cannot be faster than one: the ratio says what the cluster costs there, not what it
gains on servers of their own.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance import droplet, layout  # noqa: E402
from bench.saved import save  # noqa: E402

CODE = """
import json, time
import dask.array as da
from dask.distributed import Client
client = Client(timeout=60)
client.wait_for_workers(2, timeout=120)
workers = sorted(client.scheduler_info()["workers"])
side = int(({gb} * 2**30 / 8) ** 0.5)
x = da.random.random((side, side), chunks=(side // 8, side // 8))
def best(on):
    times = []
    for _ in range(3):
        started = time.perf_counter()
        x.sum().compute(workers=on, allow_other_workers=False)
        times.append(time.perf_counter() - started)
    return min(times)
one, two = best(workers[:1]), best(workers)
print(json.dumps({{"gb": {gb}, "chunks": x.npartitions, "threads_per_worker":
                  [w["nthreads"] for w in client.scheduler_info()["workers"].values()],
                  "one_worker_s": round(one, 2), "two_workers_s": round(two, 2),
                  "ratio_two_over_one": round(two / one, 2)}}))
"""


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gb", type=float, default=4.0, help="size of the array reduced (float64), default 4")
    args = p.parse_args()
    r = subprocess.run(["docker", "exec", droplet.NAME, "docker", "exec", layout.CONTAINER, "python", "-c",
                        CODE.format(gb=args.gb)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"the benchmark failed (is `up --workers 2` done?): {r.stderr.strip()[-800:]}")
    figures = json.loads(r.stdout.strip().splitlines()[-1])
    save("cluster", figures)


if __name__ == "__main__":
    main()
