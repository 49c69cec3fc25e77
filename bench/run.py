#!/usr/bin/env python3
"""The benchmark suite: the appliance against Jupyter reached directly, side by side in one run.

    python3 bench/run.py [--cold-up] [--rebuild] [--images] [--delivery] [--upload-mb 1024]

Needs a provisioned local droplet (`python3 provision.py up`) and its password
in $APPLIANCE_PASSWORD (or the generated one in .appliance/local/password).
Always: a no-op `up` (P5), the request figures (P1-P4), the load with wrk
(bench/load.py: 50 clients for 60 s, three kinds of login, CPU per process: P8).
--cold-up re-creates the droplet from scratch to time `up` (P5); --rebuild
times a one-package rebuild (P7); --images rebuilds the images without cache
(P6); --delivery times the image's cold delivery over a shaped 20 and 100 Mbit/s
link (bench/delivery.py) and a new server's whole cold `up` behind such a link, `up`
choosing where the image is built (bench/cold_up.py): P9. Writes docs/benchmarks.md, the chart
docs/benchmarks-latency.png and bench/results/latest.json.
"""
import argparse
import datetime
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance import bootstrap, layout  # noqa: E402
from bench import saved  # noqa: E402

GOALS = {  # figure: (direction, goal ratio appliance/direct)
    "P1 /api/status p50, keep-alive": ("max", 1.5), "P1 /api/status p99, keep-alive": ("max", 1.5),
    "P1 /api/contents p50, keep-alive": ("max", 1.5), "P1 /api/contents p99, keep-alive": ("max", 1.5),
    "P1 /api/status p50, keep-alive, interleaved": ("max", 1.5),
    "P1 /api/status p99, keep-alive, interleaved": ("max", 1.5),
    "P1 /api/contents p50, keep-alive, interleaved": ("max", 1.5),
    "P1 /api/contents p99, keep-alive, interleaved": ("max", 1.5),
    "P1 /api/status req/s, 20 clients": ("min", 0.7), "P1 /api/contents req/s, 20 clients": ("min", 0.7),
    "P1 /api/status p50, 20 clients": ("max", 1.5), "P1 /api/contents p50, 20 clients": ("max", 1.5),
    "P1 /api/status req/s, 50 clients": ("min", 0.7), "P1 /api/status p50, 50 clients": ("max", 1.5),
    "P2 kernel execute round trip p50": ("max", 1.1),
    "P3 JupyterLab cold load to launcher": ("max", 1.3),
    "P4 1 MiB-chunk upload MB/s": ("min", 0.8),
}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def provision(*args, output=False):
    """Seconds one provision.py command took (and its output when asked); stops the run when it fails."""
    started = time.monotonic()
    r = subprocess.run([sys.executable, str(ROOT / "provision.py"), *args], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise SystemExit(r.stdout[-3000:])
    seconds = round(time.monotonic() - started, 1)
    return (seconds, r.stdout) if output else seconds


def rebuild_figures(ca_bundle):
    """P7: a one-package `rebuild` on the droplet: time and bytes sent, against the image's size."""
    seconds, out = provision("rebuild", "--package", "tabulate==0.9.0", "--ca-bundle", ca_bundle, output=True)
    provision("rebuild", "--clear-packages", "--ca-bundle", ca_bundle)  # back to the plain image
    sent = re.search(r"Image loaded on the server: ([\d.]+) (kB|MB) sent", out)
    size = re.search(r"layers are new \((\d+) MB in all\)", out)
    return [("P7 one-package `rebuild`, start to healthy", f"{seconds} s", ""),
            ("P7 bytes sent for it / image size", f"{sent[1]} {sent[2]} / {size[1]} MB", "")]


def in_droplet(container, mode, password, upload_mb):
    r = container.exec_run(["python3", "/root/bench_client.py", mode, "--socket", layout.JUPYTER_SOCKET,
                            "--ca", layout.CA_CERT, "--auth-service", layout.AUTH_SERVICE,
                            "--auth-socket", layout.AUTH_SOCKET, "--upload-mb", str(upload_mb)],
                           environment={"APPLIANCE_PASSWORD": password})  # in the API body, not on a command line
    if r.exit_code != 0:
        raise SystemExit(f"bench client ({mode}) failed: {r.output.decode()[-2000:]}")
    return json.loads(r.output.decode().strip().splitlines()[-1])


def best(a, b):
    """The better of two runs' figures, figure by figure: the lower time (…_ms), the higher rate (rps,
    mb_per_s); anything else is the first run's."""
    out = {}
    for key, value in a.items():
        other = b.get(key)
        if isinstance(value, dict) and isinstance(other, dict):
            out[key] = best(value, other)
        elif type(value) in (int, float) and type(other) in (int, float):
            out[key] = (min(value, other) if key.endswith("_ms") else
                        max(value, other) if key in ("rps", "mb_per_s") else value)
        else:
            out[key] = value
    return out


def page_load(url, credentials=None, runs=3):
    """Median ms from navigation start until JupyterLab's launcher shows, and the requests it took."""
    from playwright.sync_api import sync_playwright
    times, counts = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            for _ in range(runs):
                context = browser.new_context(http_credentials=credentials, ignore_https_errors=True)
                page = context.new_page()
                requests = []
                page.on("request", lambda request: requests.append(request.url))
                page.goto(url, timeout=120_000)
                page.locator(".jp-LauncherCard").first.wait_for(timeout=120_000)
                times.append(page.evaluate("() => performance.now()"))
                counts.append(len(requests))
                context.close()
        finally:
            browser.close()
    return {"ms": round(statistics.median(times)), "requests": round(statistics.median(counts))}


FORWARDER = """# appliance-bench-forwarder
import socket, socketserver, threading
def pump(a, b):
    while data := a.recv(65536):
        b.sendall(data)
    b.shutdown(socket.SHUT_WR)
class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        upstream = socket.socket(socket.AF_UNIX)
        upstream.connect("{socket}")
        threading.Thread(target=pump, args=(upstream, self.request), daemon=True).start()
        pump(self.request, upstream)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("127.0.0.1", 18888), Handler).serve_forever()
"""


def browser_figures(state, password):
    appliance = page_load("https://127.0.0.1:8443/lab?reset", {"username": "ds", "password": password})
    # Jupyter's unix socket is open to nginx's group only: a forwarder in the droplet runs as www-data on
    # its loopback, and SSH brings that port here.
    forwarder = subprocess.Popen(["docker", "exec", "appliance-droplet", "setpriv", "--reuid=www-data",
                                  "--regid=www-data", "--init-groups", "python3", "-c",
                                  FORWARDER.format(socket=layout.JUPYTER_SOCKET)])
    tunnel = subprocess.Popen(["ssh", "-N", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                               "-o", "ExitOnForwardFailure=yes", "-i", str(state / "droplet_ed25519"), "-p", "2222",
                               "-L", "127.0.0.1:18888:127.0.0.1:18888", "ds@127.0.0.1"],
                              stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)
        direct = page_load("http://127.0.0.1:18888/lab?reset")
    finally:
        tunnel.terminate()
        subprocess.run(["docker", "exec", "appliance-droplet", "pkill", "-f", "appliance-bench-forwarder"])
        forwarder.wait()
    return direct, appliance


def figures(d, a, both):
    """(name, direct, appliance, unit) rows from the two client results and the interleaved one (both)."""
    rows = [(f"P1 {path} {pct}, keep-alive, interleaved", both[key]["direct"][f"{pct}_ms"],
             both[key]["appliance"][f"{pct}_ms"], "ms")
            for path, key in (("/api/status", "status"), ("/api/contents", "contents")) for pct in ("p50", "p99")]
    for path, key in (("/api/status", "status"), ("/api/contents", "contents")):
        for pct in ("p50", "p99"):
            rows.append((f"P1 {path} {pct}, keep-alive", d[f"{key}_keepalive"][f"{pct}_ms"],
                         a[f"{key}_keepalive"][f"{pct}_ms"], "ms"))
        rows.append((f"P1 {path} req/s, 20 clients", d[f"{key}_20_clients"]["rps"], a[f"{key}_20_clients"]["rps"],
                     "req/s"))
        rows.append((f"P1 {path} p50, 20 clients", d[f"{key}_20_clients"]["p50_ms"],
                     a[f"{key}_20_clients"]["p50_ms"], "ms"))
    rows.append(("P1 /api/status req/s, 50 clients", d["status_50_clients"]["rps"], a["status_50_clients"]["rps"],
                 "req/s"))
    rows.append(("P1 /api/status p50, 50 clients", d["status_50_clients"]["p50_ms"], a["status_50_clients"]["p50_ms"],
                 "ms"))
    rows.append(("P2 kernel execute round trip p50", d["kernel_roundtrip"]["p50_ms"], a["kernel_roundtrip"]["p50_ms"],
                 "ms"))
    rows.append(("P4 1 MiB-chunk upload MB/s", d["upload"]["mb_per_s"], a["upload"]["mb_per_s"], "MB/s"))
    return rows


def load_figures(a):
    """(name, value, goal) rows: what the login costs the verifier and nginx under load (client.py's
    throughput runs of the appliance; a browser-like client keeps its session cookie)."""
    rows = []
    for key, what in (("status_20_clients", "/api/status, 20 clients"),
                      ("contents_20_clients", "/api/contents, 20 clients"),
                      ("status_50_clients", "/api/status, 50 clients"),
                      ("no_login_50_clients", "no login (401), 50 clients")):
        run = a.get(key, {})
        if "verifier_cpu_us_per_request" in run:
            rows.append((f"P8 verifier CPU per request, {what}",
                         f"{run['verifier_cpu_us_per_request']} µs (asked {run.get('verifier_asked_per_request')} "
                         f"times per request; nginx {run.get('nginx_cpu_us_per_request')} µs)", ""))
    if "no_login_50_clients" in a:
        rows.append(("P8 no-login requests answered, 50 clients", f"{a['no_login_50_clients']['rps']} req/s", ""))
    return rows


def bench(name):
    """Run bench/NAME.py and read back the figures it saved."""
    r = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py")], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"bench/{name}.py failed: {r.stdout[-1500:]}{r.stderr[-1500:]}")
    return saved.read(name)


def wrk_figures():
    """(name, value, goal) rows of bench/load.py: 50 clients for 60 s with wrk, three kinds of login."""
    load = bench("load")
    rows = []
    for key, what in (("remembered_login", "a browser's remembered login (Basic + session cookie)"),
                      ("basic_only", "a script's Basic header, no cookie"), ("no_credentials", "no login (401)")):
        f = load[key]
        errors = sum(f["socket_errors"].values()) + (f["non_2xx_3xx"] if key != "no_credentials" else 0)
        rows.append((f"P8 {load['clients']} clients × {load['seconds']} s (wrk), {what}",
                     f"{f['rps']} req/s, p50 {f['p50_ms']} ms, p99 {f['p99_ms']} ms "
                     f"({f['p99_ms'] / f['p50_ms']:.1f}× p50), {errors} errors; CPU s: verifier {f['cpu_s']['verifier']}"
                     f" ({f['verifier_cpu_us_per_request']} µs/request), nginx {f['cpu_s']['nginx']}, "
                     f"Jupyter {f['cpu_s']['jupyter']}", "0 errors, p99 ≤ 5× p50"))
    return rows


def delivery_figures():
    """(name, value, goal) rows of bench/delivery.py (the image's delivery per link speed and method) and
    bench/cold_up.py (a whole cold `up` of a new server per link speed, where `up` chooses)."""
    found = bench("delivery")
    return [(f"P9 image delivery at {run['mbit']} Mbit/s, {run['method']}",
             f"{run['delivery_s']} s ({run['sent_mb']} MB of a {found['tar_mb']} MB image; compressing "
             f"{run['compress_s']} s)", "≤ 180 s at 20 Mbit/s" if run["mbit"] == 20 else "")
            for run in found["runs"]] + [
        (f"P9 cold `up` of a new server at {run['mbit']} Mbit/s (--build-on {run['build_on']}: image built "
         f"{run['built_on']})", f"{run['cold_up_s']} s (upload measured {run.get('probe', '?')} Mbit/s"
         + (f"; image built on the server in {run['built_on_server_s']} s, beside site.yml)" if run["built_on"] ==
            "server" else f"; image sent: {run['sent'][0]} in {run['sent'][1]} s)"),
         "≤ 180 s at 20 Mbit/s" if run["mbit"] == 20 else "") for run in bench("cold_up")["runs"]]


def verdict(name, ratio):
    if name not in GOALS:
        return ""
    direction, goal = GOALS[name]
    ok = ratio <= goal if direction == "max" else ratio >= goal
    return f"{'met' if ok else 'NOT met'} ({'≤' if direction == 'max' else '≥'} {goal}×)"


def chart(d, a, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in ((axes[0], "status_keepalive", "GET /api/status"),
                           (axes[1], "contents_keepalive", "GET /api/contents")):
        ax.boxplot([d[key]["samples_ms"], a[key]["samples_ms"]], showfliers=False)
        ax.set_xticks([1, 2], ["Jupyter direct\n(unix socket)", "appliance\n(nginx, TLS, login)"])
        ax.set_ylabel("latency, ms (keep-alive, 500 requests)")
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# docker-stacks' scipy-notebook, as published figures say (docs/images.md, "How big docker-stacks' image is",
# has every source): no figure for a dated 2025/2026 release was found.
DOCKER_STACKS = [
    ("quay.io/jupyter/scipy-notebook:latest, undated (recent: pulled onto Kubernetes v1.37)", "1.27 GB", "—"),
    ("jupyter/scipy-notebook, pulled September 2023", "—", "4.19 GB"),
    ("jupyter/scipy-notebook, docker-stacks' CI, November 2022", "—", "2.77 GB"),
]
TO_MEASURE = "to be measured by bench/images.py"


def size_comparison(img=None):
    """The image-size comparison with docker-stacks: our figures from bench/images.py when it ran (--images)."""
    img = img or {}
    ours = (f"{img['scipy_compressed_mb']} MB" if "scipy_compressed_mb" in img else TO_MEASURE,
            f"{img['scipy_mb']} MB" if "scipy_mb" in img else TO_MEASURE)
    lines = ["## Image size next to docker-stacks' scipy-notebook", "",
             "Compressed = what a registry stores and a pull downloads (gzip per layer); uncompressed = Docker's "
             "`Size` after loading. Ours is `appliance/scipy:latest` (bench/images.py); docker-stacks' figures "
             "are published ones, cited in docs/images.md.", "",
             "| image | compressed | uncompressed |", "|---|---|---|",
             f"| appliance/scipy:latest (this repository) | {ours[0]} | {ours[1]} |"]
    lines += [f"| {name} | {compressed} | {uncompressed} |" for name, compressed, uncompressed in DOCKER_STACKS]
    full, one = (f"{img[key]} s" if key in img else TO_MEASURE for key in ("full_build_s", "one_package_rebuild_s"))
    lines += ["", f"Build of base + scipy from nothing (no layer cache): {full}; rebuild after adding one "
                  f"package: {one}.", ""]
    return lines


def write_report(rows, extra, path, img=None):
    lines = ["# Benchmarks", "",
             f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.node()}: "
             f"{os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
             "the local droplet (`python3 bench/run.py`). Direct = Jupyter's unix socket from inside the droplet "
             "(P3: through an SSH tunnel to it); appliance = https://127.0.0.1 through nginx, TLS 1.3 and the "
             "login verifier. Both measured in the same run, from the same place. \"interleaved\": one request "
             "direct, one through the appliance, in turn on two kept-alive connections, so both sides see the same "
             "machine at the same moment; the other keep-alive rows time each side in a run of its own, minutes "
             "apart, where the machine's drift and a side's own steady state (the direct side alone is two "
             "processes ping-ponging on two cores) move the ratio from run to run.", "",
             "| figure | direct | appliance | ratio | goal |", "|---|---|---|---|---|"]
    for name, direct, appliance, unit in rows:
        ratio = appliance / direct if direct else float("nan")
        lines.append(f"| {name} | {direct} {unit} | {appliance} {unit} | {ratio:.2f}× | {verdict(name, ratio)} |")
    lines += ["", "| figure | value | goal |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {goal} |" for name, value, goal in extra]
    lines += ["", "![latency, direct vs appliance](benchmarks-latency.png)", ""]
    lines += size_comparison(img)
    path.write_text("\n".join(lines))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cold-up", action="store_true", help="re-create the droplet to time a cold and a no-op up")
    p.add_argument("--images", action="store_true", help="rebuild the images without cache (P6)")
    p.add_argument("--rebuild", action="store_true", help="time a one-package rebuild and the bytes it sends (P7)")
    p.add_argument("--delivery", action="store_true", help="time the image's delivery and a new server's "
                   "cold up over a shaped link (P9)")
    p.add_argument("--upload-mb", type=int, default=1024)
    p.add_argument("--ca-bundle", default="/etc/ssl/certs/ca-certificates.crt")
    args = p.parse_args()
    import docker
    state = ROOT / ".appliance" / "local"
    extra, img = [], None
    if args.cold_up:
        provision("down", "--purge")
        cold = provision("up", "--ca-bundle", args.ca_bundle)
        extra += [("P5 cold `up`, fresh droplet, image prebuilt", f"{cold} s", "≤ 240 s")]
    provision("up", "--ca-bundle", args.ca_bundle)  # (whatever the droplet was, now as this code leaves it)
    noop, out = provision("up", "--ca-bundle", args.ca_bundle, output=True)
    fast = "Ansible is not needed" in out
    extra += [("P5 no-op `up`" + (" (fast path)" if fast else " (the fast path was NOT taken)"), f"{noop} s", "≤ 5 s")]
    password = os.environ.get("APPLIANCE_PASSWORD") or (state / "password").read_text()
    container = docker.from_env().containers.get("appliance-droplet")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        tar.add(ROOT / "bench" / "client.py", arcname="bench_client.py")
    container.put_archive("/root", archive.getvalue())
    # twice each, alternating, and the better of the two runs of each side: a drift of the machine between
    # the two sides' runs (a third apart in some runs) does not end up in the ratios
    runs = [in_droplet(container, mode, password, args.upload_mb) for mode in ("direct", "appliance") * 2]
    direct, appliance = best(runs[0], runs[2]), best(runs[1], runs[3])
    rows = figures(direct, appliance, in_droplet(container, "interleaved", password, args.upload_mb))
    extra += load_figures(appliance) + wrk_figures()
    load_direct, load_appliance = browser_figures(state, password)
    rows.append(("P3 JupyterLab cold load to launcher", load_direct["ms"], load_appliance["ms"], "ms"))
    rows.append(("P3 requests during that load", load_direct["requests"], load_appliance["requests"], ""))
    if args.rebuild:
        extra += rebuild_figures(args.ca_bundle)
    if args.images:
        r = subprocess.run([sys.executable, str(ROOT / "bench" / "images.py"), "--ca-bundle", args.ca_bundle],
                           capture_output=True, text=True, check=True)
        img = json.loads(r.stdout.strip().splitlines()[-1])
        extra += [("P6 scipy image size", f"{img['scipy_mb']} MB (base {img['base_mb']} MB)", "≤ 1500 MB"),
                  ("P6 scipy image, compressed", f"{img.get('scipy_compressed_mb', '?')} MB", ""),
                  ("P6 full build, no cache", f"{img['full_build_s']} s", ""),
                  ("P6 rebuild after adding one package", f"{img['one_package_rebuild_s']} s", "≤ 60 s")]
    if args.delivery:
        extra += delivery_figures()
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "latest.json").write_text(json.dumps({"direct": direct, "appliance": appliance, "rows": rows,
                                                     "extra": extra}, indent=1))
    chart(direct, appliance, ROOT / "docs" / "benchmarks-latency.png")
    # without --images, at least the image's uncompressed size (Docker's own figure, nothing to build)
    img = img or {"scipy_mb": round(docker.from_env().images.get("appliance/scipy:latest").attrs["Size"] / 1e6)}
    write_report(rows, extra, ROOT / "docs" / "benchmarks.md", img)
    print((ROOT / "docs" / "benchmarks.md").read_text())


if __name__ == "__main__":
    bootstrap.reexec_in_venv(__file__, extras=("test", "bench"))
    main()
