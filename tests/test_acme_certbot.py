"""The server script (appliance/server/acme.py) with Debian's real certbot against a real ACME server, on this
machine and 127.0.0.1 only: Pebble and pebble-challtestsrv on free ports, the rendered --tls acme site in a
real nginx answering Pebble's HTTP-01 checks. What differs from a server: certbot's directories are
temporary (the settings' certbot_args), and nginx is checked and reloaded with its own configuration
(APPLIANCE_TEST_NGINX_CONF) instead of systemctl. The same on the droplet, through `up`:
tests/test_e2e_acme.py."""
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509

import acme_harness
from appliance import ssh
from appliance.server import acme as server

DOMAIN = "nb.test"
FAILING = "fail.test"
ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "appliance" / "server" / "acme.py"

pytestmark = pytest.mark.skipif(
    not (shutil.which("certbot") and shutil.which("pebble") and shutil.which("nginx")) or os.geteuid() != 0,
    reason="needs root and Debian's certbot, pebble and nginx (tests/run.py installs them)")


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    work = tmp_path_factory.mktemp("acme-certbot")
    with acme_harness.acme_site(DOMAIN) as site:
        pebble = acme_harness.Pebble(work, site["http_port"])
        try:
            letsencrypt = site["base"] / "letsencrypt"
            status = site["base"] / "var" / "acme-status.json"
            cfg = {"domain": DOMAIN, "email": "ops@example.org", "directory": pebble.directory,
                   "ca_bundle": pebble.files["ca"], "webroot": str(site["webroot"]), "status": str(status),
                   "script": str(SCRIPT), "service": "appliance-certbot", "debian_timer": "certbot.timer",
                   "certbot_dir": str(letsencrypt / "config"),
                   "certbot_args": ["--config-dir", str(letsencrypt / "config"), "--work-dir",
                                    str(letsencrypt / "work"), "--logs-dir", str(letsencrypt / "logs")],
                   "cert": site["cert"], "key": site["key"], "fallback_cert": site["fallback_cert"],
                   "fallback_key": site["fallback_key"], "nginx": "nginx", "remove": [str(status)]}
            config_path = site["base"] / "acme.json"
            config_path.write_text(json.dumps(cfg))
            root = work / "pebble-root.pem"
            root.write_text(pebble.root())
            yield {"cfg": cfg, "config": str(config_path), "site": site, "pebble": pebble, "root": str(root)}
        finally:
            pebble.close()


def script(box, *args, **changes):
    """The script as the server runs it (a separate python3), with the test's nginx."""
    if changes:
        Path(box["config"]).write_text(json.dumps({**box["cfg"], **changes}))
    env = {**os.environ, server.TEST_NGINX_CONF: str(box["site"]["conf"])}
    env.pop("REQUESTS_CA_BUNDLE", None)
    return subprocess.run(["/usr/bin/python3", str(SCRIPT), args[0], box["config"], *args[1:]], env=env,
                          capture_output=True, text=True, timeout=600)


def obtain(box, **changes):
    r = script(box, "obtain", **changes)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def served(box, cafile=None):
    """The certificate the test's nginx serves on its HTTPS port (SNI nb.test), verified when cafile is given.
    A reload is asynchronous (old workers finish first): wait until nginx serves the installed certificate."""
    installed = x509.load_pem_x509_certificate(Path(box["cfg"]["cert"]).read_bytes())
    deadline = time.monotonic() + 15
    while True:
        ctx = ssl._create_unverified_context()
        with socket.create_connection(("127.0.0.1", box["site"]["https_port"]), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname=DOMAIN) as tls:
            cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
        if cert == installed or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert cert == installed, "nginx does not serve the installed certificate"
    if cafile:
        with socket.create_connection(("127.0.0.1", box["site"]["https_port"]), timeout=10) as raw, \
                ssl.create_default_context(cafile=cafile).wrap_socket(raw, server_hostname=DOMAIN):
            pass  # the full chain verifies against cafile, for the name
    return cert


def nginx_master(box):
    return box["site"]["pid"].read_text().strip()


def attempts(box):
    return json.loads(Path(box["cfg"]["status"]).read_text())["attempts"]


def test_the_directory_check_accepts_pebble_with_the_bundle(box):
    command = ssh.remote_command("acme-directory", box["pebble"].directory)
    r = subprocess.run(["sh", "-c", command], input=Path(box["pebble"].files["ca"]).read_text(), capture_output=True,
                       text=True, timeout=60)
    assert json.loads(r.stdout) == {"ok": True, "message": "answers as an ACME directory"}, r.stderr


def test_certbot_gets_the_certificate_through_the_sites_port_80(box):
    master = nginx_master(box)
    result = obtain(box)
    assert result["ok"] and result["result"] == "issued" and result["changed"], result
    cert = served(box, box["root"])  # the full chain verifies against Pebble's root, for the name
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.DNSName) == [DOMAIN]
    assert nginx_master(box) == master  # reloaded, not restarted
    assert oct(os.stat(box["cfg"]["key"]).st_mode & 0o777) == "0o600"
    renewal = (Path(box["cfg"]["certbot_dir"]) / "renewal" / f"{DOMAIN}.conf").read_text()
    assert f"renew_hook = /usr/bin/python3 {SCRIPT} deploy {box['config']}" in renewal  # --deploy-hook, kept
    assert f"server = {box['pebble'].directory}" in renewal
    assert f"webroot_path = {box['cfg']['webroot']}" in renewal  # how the script knows it is the appliance's
    assert [lin["name"] for lin in server.lineages(box["cfg"]) if lin["ours"]] == [DOMAIN]


def test_a_second_request_asks_nothing(box):
    before = served(box).serial_number
    result = obtain(box)
    assert result["ok"] and result["result"] == "kept" and not result["changed"]
    assert served(box).serial_number == before


def test_certbot_keep_until_expiring_takes_no_action_either(box):
    """Even when the script's own check is bypassed, certbot keeps a certificate that is not due."""
    r = subprocess.run([*server.certonly_argv(box["cfg"], box["config"])], capture_output=True, text=True,
                       env={**os.environ, "REQUESTS_CA_BUNDLE": box["cfg"]["ca_bundle"],
                            server.TEST_NGINX_CONF: str(box["site"]["conf"])}, timeout=300)
    assert r.returncode == 0 and "Certificate not yet due for renewal; no action taken." in r.stdout + r.stderr


def test_renewal_not_due_then_forced(box):
    before, master = served(box).serial_number, nginx_master(box)
    r = script(box, "renew")
    assert r.returncode == 0 and r.stdout.startswith("not due: the certificate for nb.test from Pebble"), \
        r.stdout + r.stderr
    assert attempts(box)[-1]["result"] == "not due" and served(box).serial_number == before
    r = script(box, "renew", "--force")
    assert r.returncode == 0 and r.stdout.startswith("renewed: "), r.stdout + r.stderr
    assert served(box, box["root"]).serial_number != before and nginx_master(box) == master


def test_a_failed_renewal_keeps_the_certificate(box):
    before = served(box).serial_number
    box["pebble"].dns("set-servfail", DOMAIN)
    try:
        r = script(box, "renew", "--force")
    finally:
        box["pebble"].dns("clear-servfail", DOMAIN)
    assert r.returncode == 1 and r.stdout.startswith(f"failed: {DOMAIN}: "), r.stdout + r.stderr
    last = attempts(box)[-1]
    assert not last["ok"] and "\n" not in last["message"] and len(last["message"]) <= 400
    print("certbot's reason for a failed renewal:", last["message"])
    assert served(box).serial_number == before


def test_a_failed_request_for_another_name_keeps_the_previous_certificate(box):
    before = served(box).serial_number
    box["pebble"].dns("set-servfail", FAILING)
    try:
        result = obtain(box, domain=FAILING)
    finally:
        box["pebble"].dns("clear-servfail", FAILING)
    assert not result["ok"] and result["message"].startswith(f"{FAILING}: "), result
    print("certbot's reason for a failed request:", result["message"])
    assert served(box).serial_number == before and not result["changed"]
    assert result["serving"].startswith(f"the certificate for {DOMAIN} from Pebble")
    result = obtain(box, domain=DOMAIN)
    assert result["ok"] and result["result"] == "kept"


def test_a_directory_that_is_not_there_is_one_line(box):
    result = obtain(box, domain="other.test", directory=box["pebble"].directory.replace("/dir", "/nope"))
    assert not result["ok"] and result["message"] == "the ACME server answered HTTP 404", result
    Path(box["config"]).write_text(json.dumps(box["cfg"]))


def test_remove_deletes_the_certificate_with_certbot(box):
    r = script(box, "remove")
    assert r.returncode == 0 and json.loads(r.stdout)["deleted"] == [DOMAIN], r.stderr
    assert not list((Path(box["cfg"]["certbot_dir"]) / "renewal").glob("*.conf"))
    assert not (Path(box["cfg"]["certbot_dir"]) / "live" / DOMAIN).exists()

