#!/usr/bin/env python3
"""Load: many clients at once against the local droplet's appliance, with wrk from this machine, and what
each process on the server spent in CPU meanwhile.

    python3 bench/load.py [--clients 50] [--seconds 60] [--path /api/status]

Three runs: a remembered login as a browser sends it (its Basic header and the session cookie nginx
set after the first check), the Basic header alone (a script without a cookie jar), and no credentials
at all (every answer a 401). wrk talks to the droplet's address on Docker's bridge (not through Docker's
port publishing, which would add a proxy of its own). The password goes to wrk in a Lua file in a private
directory, never on its command line. Prints JSON (also bench/results/load.json).
"""
import argparse
import base64
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance import bootstrap, droplet  # noqa: E402
from bench.saved import save  # noqa: E402

# CPU ticks (utime + stime) per kind of process in the droplet: the login verifier, nginx, Jupyter Server
CPU = r"""
import json, os
ticks = {"verifier": 0, "nginx": 0, "jupyter": 0}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    kind = ("verifier" if "authd.py" in cmd else "nginx" if cmd.startswith("nginx") else
            "jupyter" if "/opt/appliance/start.py" in cmd else None)  # (the image's entry point serves Jupyter)
    if kind:
        ticks[kind] += int(fields[11]) + int(fields[12])
print(json.dumps({k: v / os.sysconf("SC_CLK_TCK") for k, v in ticks.items()}))
"""



def cpu():
    r = subprocess.run(["docker", "exec", droplet.NAME, "python3", "-c", CPU], capture_output=True, text=True,
                       check=True)
    return json.loads(r.stdout)


def seconds(text):
    value, unit = re.match(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60}[unit]


def parse(out):
    """Requests/s, p50 and p99 (ms), and every kind of error wrk counts."""
    latency = dict(re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)", out, re.M))
    errors = {k: int(v) for k, v in re.findall(r"(connect|read|write|timeout) (\d+)", out)}
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    return {"requests": int(total[1]), "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),
            "p50_ms": round(seconds(latency["50"]) * 1000, 2), "p99_ms": round(seconds(latency["99"]) * 1000, 2),
            "socket_errors": errors, "non_2xx_3xx": int(non_2xx[1]) if non_2xx else 0}


def session_cookie(url, ca, authorization):
    """The cookie a browser keeps after its first good login ('' when the appliance sets none)."""
    import requests
    r = requests.get(url, headers={"Authorization": authorization}, verify=ca, timeout=30)
    r.raise_for_status()
    return "; ".join(f"{c.name}={c.value}" for c in r.cookies)


def run(url, clients, duration, headers, private):
    script = Path(private) / "headers.lua"
    script.write_text("".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n" for k, v in headers.items() if v))
    before = cpu()
    r = subprocess.run(["wrk", "-t", "2", "-c", str(clients), "-d", f"{duration}s", "--latency", "--timeout", "10s",
                        "-s", str(script), url], capture_output=True, text=True, check=True)
    after = cpu()
    figures = parse(r.stdout)
    spent = {k: round(after[k] - before[k], 2) for k in before}
    figures["cpu_s"] = spent
    figures["verifier_cpu_us_per_request"] = round(spent["verifier"] / max(figures["requests"], 1) * 1e6, 1)
    return figures


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--seconds", type=int, default=60)
    p.add_argument("--path", default="/api/status")
    args = p.parse_args()
    bootstrap.apt_install(["wrk"], "The load benchmark")
    state = ROOT / ".appliance" / "local"
    password = os.environ.get("APPLIANCE_PASSWORD") or (state / "password").read_text().strip()
    authorization = "Basic " + base64.b64encode(f"ds:{password}".encode()).decode()
    # the CA's certificate names 127.0.0.1, not the bridge address: wrk does not check certificates anyway
    url = f"https://{droplet.address()}{args.path}"
    cookie = session_cookie(f"https://127.0.0.1:{droplet.PORTS[443]}{args.path}", str(state / "ca.crt"),
                            authorization)
    results = {"clients": args.clients, "seconds": args.seconds, "path": args.path, "session_cookie": bool(cookie)}
    with tempfile.TemporaryDirectory(prefix="appliance-load-") as private:
        os.chmod(private, 0o700)
        results["remembered_login"] = run(url, args.clients, args.seconds,
                                          {"Authorization": authorization, "Cookie": cookie}, private)
        results["basic_only"] = run(url, args.clients, args.seconds, {"Authorization": authorization},
                                    private)
        results["no_credentials"] = run(url, args.clients, args.seconds, {},
                                        private)
    save("load", results)


if __name__ == "__main__":
    bootstrap.reexec_in_venv(__file__, extras=("test", "bench"))
    main()
