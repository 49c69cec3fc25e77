"""End to end (issue 15): `up --tls acme` on the session's droplet against a real ACME server.

Pebble (Debian's package, 2.4) runs inside the droplet with its DNS stand-in pebble-challtestsrv, which
answers every name with 127.0.0.1 (no AAAA: Pebble would try that first, and the site listens on IPv4):
Pebble's HTTP-01 check reaches the droplet's own nginx on port 80, and certbot talks to Pebble on
127.0.0.1:14000, trusting the listener's CA given with --acme-ca-bundle. Nothing leaves the machine. The
operator's machine cannot resolve appliance.test, so `up` warns and continues. At the end the droplet is
switched back to the private CA and provisioned with the session's usual settings, as the other e2e tests
expect it.
"""
import http.client
import json
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509

import acme_harness
from appliance import layout
from helpers import ARTIFACTS, DROPLET, in_droplet, jupyter_started_at, provision

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

DOMAIN = "appliance.test"
FAILING = "fail.test"
DIRECTORY = "https://127.0.0.1:14000/dir"
PEBBLE_DIR = "/etc/e2e-pebble"
CHALLTESTSRV = "http://127.0.0.1:8055"
HTTPS = ("127.0.0.1", 8443)  # the droplet's 443, published here


def droplet(*cmd, input=None, timeout=900, check=True):
    stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
    r = subprocess.run(["docker", "exec", "-i", DROPLET, *cmd], capture_output=True, text=True, timeout=timeout,
                       **stdin)
    if check:
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r


def fetch_in_droplet(url, cafile=None, data=None):
    """GET (or POST JSON) url from inside the droplet; returns the body."""
    script = ("import json, ssl, sys, urllib.request\n"
              "ctx = ssl.create_default_context(cafile=sys.argv[2]) if sys.argv[2] else None\n"
              "data = sys.argv[3].encode() if sys.argv[3] else None\n"
              "req = urllib.request.Request(sys.argv[1], data=data, headers={'Content-Type': 'application/json'})\n"
              "print(urllib.request.urlopen(req, context=ctx, timeout=10).read().decode())\n")
    return droplet("python3", "-c", script, url, cafile or "", json.dumps(data) if data else "", timeout=60).stdout


def listener_certificate(tmp_path):
    """Pebble's API listener (the package ships none): (CA, certificate, key) as PEM text."""
    made = acme_harness.listener_certificate(tmp_path)
    return tuple(Path(made[name]).read_text() for name in ("ca", "cert", "key"))


@pytest.fixture(scope="module")
def pebble(appliance, tmp_path_factory):
    """Pebble and pebble-challtestsrv as transient units in the droplet; afterwards they stop and the droplet
    is provisioned with the session's settings again (the private CA)."""
    droplet("sh", "-c", "DEBIAN_FRONTEND=noninteractive apt-get install -y -q pebble", timeout=900)
    ca, cert, key = listener_certificate(tmp_path_factory.mktemp("listener"))
    config = {"pebble": {"listenAddress": "127.0.0.1:14000", "managementListenAddress": "127.0.0.1:15000",
                         "certificate": f"{PEBBLE_DIR}/cert.pem", "privateKey": f"{PEBBLE_DIR}/key.pem",
                         "httpPort": 80, "tlsPort": 5001, "ocspResponderURL": "",
                         "externalAccountBindingRequired": False}}
    bundle = tmp_path_factory.mktemp("pebble") / "pebble-listener-ca.pem"
    bundle.write_text(ca)
    try:
        droplet("install", "-d", "-m", "0700", PEBBLE_DIR)
        for name, text in [("ca.pem", ca), ("cert.pem", cert), ("key.pem", key),
                           ("config.json", json.dumps(config))]:
            droplet("sh", "-c", f"umask 077 && cat > {PEBBLE_DIR}/{name}", input=text)
        # DNS only (no challenge servers of its own), A = 127.0.0.1, no AAAA answers
        droplet("systemd-run", "--unit=e2e-challtestsrv", "--collect", "/usr/bin/pebble-challtestsrv",
                "-defaultIPv4", "127.0.0.1", "-defaultIPv6=", "-http01=", "-https01=", "-tlsalpn01=",
                "-dns01", "127.0.0.1:8053", "-management", "127.0.0.1:8055")
        # every validation really made (no authorization reused), at once
        droplet("systemd-run", "--unit=e2e-pebble", "--collect", "--setenv=PEBBLE_VA_NOSLEEP=1",
                "--setenv=PEBBLE_VA_ALWAYS_VALID=0", "--setenv=PEBBLE_AUTHZREUSE=0",
                "--setenv=PEBBLE_WFE_NONCEREJECT=0", "/usr/bin/pebble",
                "-config", f"{PEBBLE_DIR}/config.json", "-dnsserver", "127.0.0.1:8053")
        deadline = time.monotonic() + 60
        while True:
            try:
                assert "newOrder" in json.loads(fetch_in_droplet(DIRECTORY, f"{PEBBLE_DIR}/ca.pem"))
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        root = fetch_in_droplet("https://127.0.0.1:15000/roots/0", f"{PEBBLE_DIR}/ca.pem")
        roots = tmp_path_factory.mktemp("pebble-root") / "pebble-root.pem"
        roots.write_text(root)
        # the operator's DNS check asks a hosts file, not the machine's resolver: no query leaves the machine
        hosts = tmp_path_factory.mktemp("hosts") / "hosts"
        hosts.write_text(f"127.0.0.1 {DOMAIN} {FAILING}\n")
        yield {"bundle": str(bundle), "root": str(roots), "env": {**appliance["env"], "APPLIANCE_TEST_HOSTS": str(hosts)}}
    finally:
        droplet("systemctl", "stop", "e2e-pebble.service", "e2e-challtestsrv.service", check=False, timeout=60)
        droplet("rm", "-rf", PEBBLE_DIR, check=False, timeout=60)
        r, _ = provision("up", env=appliance["env"])  # the session's droplet as the other tests expect it
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "e2e-acme.json").write_text(json.dumps(FIGURES, indent=2))
        assert r.returncode == 0, r.stdout[-4000:]


FIGURES = {}  # for the record (tests/artifacts/e2e-acme.json): how long issuing and renewing took, what failure says


def up_acme(pebble, domain=DOMAIN):
    r, took = provision("up", "--domain", domain, "--tls", "acme", "--acme-email", "e2e@appliance.test",
                        "--acme-directory", DIRECTORY, "--acme-ca-bundle", pebble["bundle"], env=pebble["env"])
    FIGURES.setdefault("up_s", []).append(round(took, 1))
    return r


def _peer(ctx, name):
    with socket.create_connection(HTTPS, timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=name) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def served(cafile=None, name=DOMAIN):
    """The certificate nginx serves on the droplet's HTTPS port (SNI name), once it is the installed one (a
    reload is asynchronous: old workers finish first), verified against cafile when given."""
    installed = x509.load_pem_x509_certificate(in_droplet("cat", layout.TLS_CERT).encode())
    unverified = ssl.create_default_context()
    unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
    deadline = time.monotonic() + 15
    while (cert := _peer(unverified, name)) != installed and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cert == installed, "nginx does not serve the installed certificate"
    if cafile:
        _peer(ssl.create_default_context(cafile=cafile), name)  # the full chain verifies, for the name
    return cert


def serial():
    return served().serial_number


def status(pebble):
    r, _ = provision("status", "--json", env=pebble["env"])
    return r.returncode, json.loads(r.stdout[r.stdout.index("{"):])


def attempts():
    return json.loads(in_droplet("cat", layout.ACME_STATUS))["attempts"]


def nginx_processes():
    master = in_droplet("systemctl", "show", "-p", "MainPID", "--value", "nginx").strip()
    workers = set(in_droplet("sh", "-c", f"pgrep -P {master} || true").split())
    return master, workers


def test_up_gets_a_certificate_that_verifies_against_the_cas_root(pebble):
    r = up_acme(pebble)
    assert r.returncode == 0, r.stdout[-4000:]
    assert "does not resolve" not in r.stdout and "resolves to" not in r.stdout  # the name is the server's
    cert = served(pebble["root"])  # the chain nginx serves verifies against Pebble's root, for the name
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.DNSName) == [DOMAIN]
    assert "Pebble" in cert.issuer.rfc4514_string()
    assert "  certificate:   from Pebble Intermediate CA" in r.stdout and "trust it once" not in r.stdout
    assert in_droplet("stat", "-c", "%a %U %G", layout.TLS_KEY).split() == ["600", "root", "root"]
    assert in_droplet("stat", "-c", "%a %U", layout.ACME_CA_BUNDLE).split() == ["644", "root"]
    renewal = in_droplet("cat", f"/etc/letsencrypt/renewal/{DOMAIN}.conf")
    assert f"server = {DIRECTORY}" in renewal and f"renew_hook = /usr/bin/python3 {layout.ACME_SCRIPT} deploy" \
        in renewal and f"webroot_path = {layout.ACME_WEBROOT}" in renewal
    assert in_droplet("systemctl", "is-enabled", f"{layout.ACME_SERVICE}.timer").strip() == "enabled"
    assert in_droplet("systemctl", "is-active", f"{layout.ACME_SERVICE}.timer").strip() == "active"
    assert droplet("systemctl", "is-enabled", "certbot.timer", check=False).stdout.strip() == "masked"
    assert attempts()[-1]["result"] == "issued" and attempts()[-1]["ok"]
    assert in_droplet("sh", "-c", f"stat -c '%a %U' {layout.ACME_WEBROOT}").split() == ["755", "root"]


def test_port_80_still_redirects_everything_but_the_challenge(pebble):
    answers = {}
    for path in ("/lab", "/.well-known/acme-challenge/nothing-here", "/.well-known/acme-challenge/",
                 "/.well-known/other"):
        conn = http.client.HTTPConnection("127.0.0.1", 8080, timeout=10)  # the droplet's port 80
        try:
            conn.request("GET", path, headers={"Host": DOMAIN})
            r = conn.getresponse()
            r.read()
            answers[path] = (r.status, r.headers.get("Location"))
        finally:
            conn.close()
    assert answers["/lab"] == (308, f"https://{DOMAIN}:8443/lab")
    assert answers["/.well-known/acme-challenge/nothing-here"][0] == 404
    assert answers["/.well-known/acme-challenge/"][0] in (403, 404)  # no listing
    assert answers["/.well-known/other"][0] == 308


def test_a_second_up_requests_nothing(pebble):
    before, tried = serial(), len(attempts())
    r = up_acme(pebble)
    assert r.returncode == 0 and "changed=0" in r.stdout, r.stdout[-4000:]
    assert "Ansible is not needed" in r.stdout  # the no-op fast path: nothing asked of the CA either
    assert serial() == before and len(attempts()) == tried and attempts()[-1]["result"] == "issued"


def test_status_shows_issuer_expiry_and_the_last_attempt(pebble):
    code, facts = status(pebble)
    assert code == 0 and facts["healthy"], facts["problems"]
    assert "Pebble" in facts["certificate"]["issuer"] and facts["certificate"]["days_left"] > 14
    assert facts["acme"]["domain"] == DOMAIN and facts["acme"]["timer"] == "active"
    assert facts["acme"]["last"]["ok"] and facts["acme"]["last"]["result"] == "issued"
    r, _ = provision("status", env=pebble["env"])
    assert r.returncode == 0 and f"renewal:     the ACME CA at {DIRECTORY} for {DOMAIN}" in r.stdout


def test_the_timer_service_renews_and_a_forced_renewal_reloads_nginx_only(pebble):
    droplet("systemctl", "start", f"{layout.ACME_SERVICE}.service", timeout=600)  # oneshot: returns when done
    assert attempts()[-1]["action"] == "renewal" and attempts()[-1]["result"] == "not due"
    assert in_droplet("systemctl", "show", "-p", "Result", "--value", f"{layout.ACME_SERVICE}.service").strip() \
        == "success"
    before, started, (master, workers) = serial(), jupyter_started_at(), nginx_processes()
    renewing = time.monotonic()
    droplet("systemd-run", "--wait", "--pipe", "--collect", "--unit=e2e-forced-renewal", "/usr/bin/python3",
            layout.ACME_SCRIPT, "renew", layout.ACME_CONFIG, "--force", timeout=600)
    FIGURES["forced_renewal_s"] = round(time.monotonic() - renewing, 1)
    assert serial() != before and attempts()[-1]["result"] == "renewed"
    deadline = time.monotonic() + 30
    while nginx_processes()[1] & workers and time.monotonic() < deadline:  # old workers finish, then go
        time.sleep(0.5)
    now_master, now_workers = nginx_processes()
    assert now_master == master and now_workers and not now_workers & workers  # reloaded, not restarted
    assert jupyter_started_at() == started  # the notebook container was never touched
    served(pebble["root"])


def test_a_failed_renewal_keeps_the_certificate_and_status_says_so(pebble):
    before = serial()
    fetch_in_droplet(f"{CHALLTESTSRV}/set-servfail", data={"host": f"{DOMAIN}."})
    try:
        r = droplet("systemd-run", "--wait", "--pipe", "--collect", "--unit=e2e-failed-renewal", "/usr/bin/python3",
                    layout.ACME_SCRIPT, "renew", layout.ACME_CONFIG, "--force", check=False, timeout=600)
        assert r.returncode != 0 and r.stdout.startswith("failed: "), r.stdout + r.stderr
        assert serial() == before
        last = attempts()[-1]
        assert (last["action"], last["result"], last["ok"]) == ("renewal", "failed", False)
        assert "\n" not in last["message"] and DOMAIN in last["message"]
        code, facts = status(pebble)
        assert code == 1 and any(p.startswith("the last certificate renewal failed") for p in facts["problems"])
    finally:
        fetch_in_droplet(f"{CHALLTESTSRV}/clear-servfail", data={"host": f"{DOMAIN}."})
    droplet("systemctl", "start", f"{layout.ACME_SERVICE}.service", timeout=600)  # the timer's next run: fine again
    assert attempts()[-1]["ok"] and status(pebble)[0] == 0


def test_a_failed_request_is_one_line_and_the_previous_certificate_stays(pebble):
    before = serial()
    fetch_in_droplet(f"{CHALLTESTSRV}/set-servfail", data={"host": f"{FAILING}."})
    try:
        r = up_acme(pebble, FAILING)
        tried = len(attempts())
        again = up_acme(pebble, FAILING)  # the same up again asks the CA again (no fast path after a failure)
        assert again.returncode == 1 and "Running Ansible" in again.stdout and len(attempts()) == tried + 1, \
            again.stdout[-3000:]
    finally:
        fetch_in_droplet(f"{CHALLTESTSRV}/clear-servfail", data={"host": f"{FAILING}."})
    errors = [line for line in r.stdout.splitlines() if line.startswith("error:")]
    FIGURES["failed_request_says"] = errors
    assert r.returncode == 1 and len(errors) == 1, r.stdout[-4000:]
    assert errors[0].startswith(f"error: no certificate from the ACME CA at {DIRECTORY} for {FAILING}: {FAILING}: ")
    assert "keeps serving" in errors[0] and "run the same up again" in errors[0] and "Traceback" not in r.stdout
    assert serial() == before  # appliance.test's certificate, still valid, still renewed
    assert in_droplet("ls", "/etc/letsencrypt/renewal").split() == [f"{DOMAIN}.conf"]
    code, facts = status(pebble)
    assert code == 1 and any(p.startswith("the last certificate request failed") for p in facts["problems"])

    r = up_acme(pebble)  # back to the name that works: its certificate is kept, nothing requested
    assert r.returncode == 0, r.stdout[-4000:]
    assert serial() == before and attempts()[-1]["result"] == "kept"
    assert status(pebble)[0] == 0


def test_a_wrong_directory_is_refused_before_anything_changes(pebble):
    before = in_droplet("sh", "-c", f"sha256sum {layout.ACME_CONFIG} {layout.NGINX_SITE}")
    r = provision("up", "--domain", DOMAIN, "--tls", "acme", "--acme-directory", "https://127.0.0.1:14000/nope",
                  "--acme-ca-bundle", pebble["bundle"], env=pebble["env"])[0]
    errors = [line for line in r.stdout.splitlines() if line.startswith("error:")]
    assert r.returncode == 1 and errors == [
        "error: the ACME directory https://127.0.0.1:14000/nope answers HTTP 404 (asked from the server 127.0.0.1); "
        "give the right one with --acme-directory, or leave it out for Let's Encrypt"], r.stdout[-3000:]
    assert "PLAY" not in r.stdout
    assert in_droplet("sh", "-c", f"sha256sum {layout.ACME_CONFIG} {layout.NGINX_SITE}") == before


def test_back_to_the_private_ca_leaves_no_certificate_renewal_config_or_timer(pebble, appliance):
    r, _ = provision("up", env=pebble["env"])
    assert r.returncode == 0, r.stdout[-4000:]
    assert f"This run has no --tls acme: the certificate for {DOMAIN}" in r.stdout
    assert droplet("sh", "-c", "ls /etc/letsencrypt/renewal/*.conf", check=False).returncode != 0
    assert droplet("sh", "-c", f"ls /etc/letsencrypt/live/{DOMAIN}", check=False).returncode != 0
    assert droplet("systemctl", "is-enabled", f"{layout.ACME_SERVICE}.timer", check=False).returncode != 0
    assert droplet("systemctl", "is-enabled", "certbot.timer", check=False).stdout.strip() == "disabled"
    assert f"{layout.ACME_SERVICE}" not in in_droplet("systemctl", "list-timers", "--all")
    for path in (layout.ACME_CONFIG, layout.ACME_SCRIPT, layout.ACME_STATUS, layout.ACME_WEBROOT, layout.ACME_UNIT,
                 layout.ACME_TIMER_UNIT, layout.FALLBACK_CERT, layout.FALLBACK_KEY, layout.ACME_CA_BUNDLE):
        assert droplet("test", "-e", path, check=False).returncode != 0, path
    served(appliance["ca"], "127.0.0.1")  # the private CA's certificate again
    assert "acme-challenge" not in in_droplet("cat", layout.NGINX_SITE)
    code, facts = status(pebble)
    assert code == 0 and facts["acme"] is None
