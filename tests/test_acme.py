"""--tls acme without a CA or a server: the server script (appliance/server/acme.py) against a certbot
stand-in that writes what certbot 2.1 writes and says what it says; the operator's checks (DNS, the ACME
directory against a local HTTPS server); status's verdict; the rendered files; the port-80 site in a real
nginx. The run against a real ACME server (Pebble) in the local droplet is tests/test_e2e_acme.py."""
import contextlib
import datetime
import http.client
import http.server
import io
import ipaddress
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import acme_harness
from appliance import acme, config, deploy, layout, ops, render, ssh
from appliance.errors import DeployError
from appliance.server import acme as server

DOMAIN = "nb.example.org"
DIRECTORY = "https://acme.test:14000/dir"


@pytest.fixture(autouse=True)
def ca_passphrases(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


# certificates -------------------------------------------------------------------------------------------

def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class CA:
    """A CA that issues certificates like an ACME CA's: leaf + intermediate as the full chain."""

    def __init__(self, name="Test ACME Intermediate"):
        self.key = _key()
        self.name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test ACME"),
                               x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(3650))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))

    def issue(self, names, days=90, key=None):
        """(full chain PEM, key PEM) for names, valid `days` from now."""
        key = key or _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
                .issuer_name(self.name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
                .sign(self.key, hashes.SHA256()))
        return (cert.public_bytes(serialization.Encoding.PEM) + self.cert.public_bytes(serialization.Encoding.PEM),
                _pem_key(key))


# the certbot stand-in -----------------------------------------------------------------------------------

SAVING = "Saving debug log to /var/log/letsencrypt/letsencrypt.log\n"
ADVICE = ("Ask for help or search for solutions at https://community.letsencrypt.org. See the logfile "
          "/var/log/letsencrypt/letsencrypt.log or re-run Certbot with -v for more details.\n")
SIDE = "\n" + "- " * 39 + "-\n"


def challenge_failure(domain, kind="dns", detail=None):
    """certbot 2.1's words when the CA could not validate (auth_handler._report_failed_authzrs)."""
    detail = detail or (f"DNS problem: SERVFAIL looking up A for {domain} - the domain's nameservers may be "
                        "malfunctioning")
    return (f"\nCertbot failed to authenticate some domains (authenticator: webroot). The Certificate Authority "
            f"reported these problems:\n  Domain: {domain}\n  Type:   {kind}\n  Detail: {detail}\n\n"
            "Hint: The Certificate Authority failed to download the temporary challenge files created by Certbot. "
            "Ensure that the listed domains serve their content from the provided --webroot-path/-w and that files "
            "created there can be downloaded from the internet.\n\n")


RATE_LIMITED = ("An unexpected error occurred:\nError creating new order :: too many certificates (5) already issued "
                "for this exact set of domains in the last 168 hours: nb.example.org, retry after "
                "2026-12-01T10:00:00Z: see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-exact-set-"
                "of-hostnames\n")


class Certbot:
    """Stands in for `certbot`, `nginx -t` and `systemctl` (acme.run): writes live/, renewal/*.conf as
    certbot 2.1 does, runs the deploy hook in-process, and prints certbot's own sentences."""

    def __init__(self, cfg, config_path, ca):
        self.cfg, self.config_path, self.ca = cfg, config_path, ca
        self.calls, self.envs, self.hook_codes = [], [], []
        self.fail = None            # certbot's output for a failed request or renewal
        self.nginx_ok = True
        self.days = 90

    def __call__(self, argv, env=None, timeout=None):
        self.calls.append(argv)
        if argv[0] == "nginx":
            return (0, "nginx: configuration file /etc/nginx/nginx.conf test is successful\n") if self.nginx_ok \
                else (1, "nginx: [emerg] cannot load certificate key\nnginx: configuration file test failed\n")
        if argv[0] == "systemctl":
            return 0, ""
        assert argv[0] == "certbot", argv
        self.envs.append(env)
        return getattr(self, argv[1])(argv)

    def option(self, argv, name):
        return argv[argv.index(name) + 1]

    def renewal_conf(self, name):
        return Path(self.cfg["certbot_dir"]) / "renewal" / f"{name}.conf"

    def live(self, name):
        return Path(self.cfg["certbot_dir"]) / "live" / name

    def save(self, name, names, directory, hook, webroot):
        chain, key = self.ca.issue(names, self.days)
        live = self.live(name)
        live.mkdir(parents=True, exist_ok=True)
        (live / "fullchain.pem").write_bytes(chain)
        (live / "privkey.pem").write_bytes(key)
        conf = self.renewal_conf(name)
        conf.parent.mkdir(parents=True, exist_ok=True)
        if not conf.exists():
            conf.write_text(f"# renew_before_expiry = 30 days\nversion = 2.1.0\narchive_dir = /etc/letsencrypt/archive/"
                            f"{name}\ncert = {live}/cert.pem\nprivkey = {live}/privkey.pem\nchain = {live}/chain.pem\n"
                            f"fullchain = {live}/fullchain.pem\n\n# Options used in the renewal process\n"
                            f"[renewalparams]\naccount = 0123abcd\n" + (f"renew_hook = {hook}\n" if hook else "")
                            + "authenticator = webroot\n" + f"webroot_path = {webroot},\nserver = {directory}\n"
                            f"key_type = ecdsa\n[[webroot_map]]\n{names[0]} = {webroot}\n")
        if hook:  # certbot runs it through a shell: here in-process, with its environment
            assert hook == f"/usr/bin/python3 {self.cfg['script']} deploy {self.config_path}"
            os.environ["RENEWED_LINEAGE"] = str(live)
            try:  # certbot shows the hook's output in its own and only logs a failure
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    self.hook_codes.append(server.main(["deploy", self.config_path]))
            finally:
                del os.environ["RENEWED_LINEAGE"]

    def certonly(self, argv):
        name, domain = self.option(argv, "--cert-name"), self.option(argv, "--domains")
        assert "--non-interactive" in argv and "--keep-until-expiring" in argv and "--agree-tos" in argv
        if self.fail:
            return 1, SAVING + f"Requesting a certificate for {domain}\n" + self.fail + ADVICE
        current = server.read_cert(self.live(name) / "fullchain.pem")
        if current and current["not_after"] - server.now() > server.RENEW_BEFORE:
            return 0, SAVING + "Certificate not yet due for renewal; no action taken.\n"
        self.save(name, [domain], self.option(argv, "--server"), self.option(argv, "--deploy-hook"),
                  self.option(argv, "--webroot-path"))
        return 0, (SAVING + f"Requesting a certificate for {domain}\n\nSuccessfully received certificate.\n"
                   f"Certificate is saved at: {self.live(name)}/fullchain.pem\n")

    def renew(self, argv):
        assert "--no-random-sleep-on-renew" in argv and "--non-interactive" in argv
        only = self.option(argv, "--cert-name") if "--cert-name" in argv else None
        out, done = [SAVING], {"success": [], "failure": [], "skipped": []}
        for conf in sorted((Path(self.cfg["certbot_dir"]) / "renewal").glob("*.conf")):
            name = conf.stem
            if only and name != only:
                continue
            out.append(SIDE + f"Processing {conf}" + SIDE)
            values = dict(line.split(" = ", 1) for line in conf.read_text().splitlines() if " = " in line)
            fullchain = values["fullchain"]
            cert = server.read_cert(fullchain)
            if "--force-renewal" not in argv and cert["not_after"] - server.now() > server.RENEW_BEFORE:
                out.append("Certificate not yet due for renewal\n")
                done["skipped"].append(f"{fullchain} expires on {cert['not_after']:%Y-%m-%d}")
            elif self.fail:
                out.append(f"Renewing an existing certificate for {name}\n" + self.fail
                           + f"Failed to renew certificate {name} with error: Some challenges have failed.\n")
                done["failure"].append(fullchain)
            else:
                out.append(f"Renewing an existing certificate for {name}\n")
                self.save(name, cert["names"], values["server"], values.get("renew_hook"), self.cfg["webroot"])
                done["success"].append(fullchain)
        out.append(SIDE)
        if done["skipped"]:
            out.append("The following certificates are not due for renewal yet:\n"
                       + "".join(f"  {m} (skipped)\n" for m in done["skipped"]))
        if not done["success"] and not done["failure"]:
            out.append("No renewals were attempted.\n")
        elif not done["failure"]:
            out.append("Congratulations, all renewals succeeded: \n"
                       + "".join(f"  {m} (success)\n" for m in done["success"]))
        else:
            out.append("All renewals failed. The following certificates could not be renewed:\n"
                       + "".join(f"  {m} (failure)\n" for m in done["failure"]))
        out.append(SIDE)
        if done["failure"]:
            out.append(f"{len(done['failure'])} renew failure(s), 0 parse failure(s)\n" + ADVICE)
            return 1, "".join(out)
        return 0, "".join(out)

    def delete(self, argv):
        assert "--non-interactive" in argv
        name = self.option(argv, "--cert-name")
        self.renewal_conf(name).unlink()
        shutil.rmtree(self.live(name))
        return 0, SAVING + f"Deleted all files relating to certificate {name}.\n"


@pytest.fixture
def box(tmp_path, monkeypatch):
    """A server's files under tmp_path: the private CA's certificate as the fallback, certbot's directory,
    the script's settings as templates/acme.json.j2 renders them; acme.run is the certbot stand-in."""
    root = tmp_path / "server"
    tls_dir = root / "etc/appliance/tls"
    tls_dir.mkdir(parents=True)
    private = CA("Jupyter appliance CA for nb.example.org")
    chain, key = private.issue([DOMAIN], days=365)
    (tls_dir / "private.crt").write_bytes(chain)
    (tls_dir / "private.key").write_bytes(key)
    cfg = {"domain": DOMAIN, "email": "ops@example.org", "directory": DIRECTORY, "ca_bundle": None,
           "webroot": str(root / "var/lib/appliance/acme-webroot"),
           "status": str(root / "var/lib/appliance/acme-status.json"), "script": "/usr/local/lib/appliance/acme.py",
           "service": "appliance-certbot", "debian_timer": "certbot.timer",
           "certbot_dir": str(root / "etc/letsencrypt"), "cert": str(tls_dir / "server.crt"),
           "key": str(tls_dir / "server.key"), "fallback_cert": str(tls_dir / "private.crt"),
           "fallback_key": str(tls_dir / "private.key"), "nginx": "nginx",
           "remove": [str(root / "var/lib/appliance/acme-webroot"), str(root / "var/lib/appliance/acme-status.json"),
                      str(tls_dir / "private.crt"), str(tls_dir / "private.key")]}
    Path(cfg["webroot"]).mkdir(parents=True)
    config_path = root / "etc/appliance/acme.json"
    config_path.write_text(json.dumps(cfg))
    cfg["remove"].append(str(config_path))
    config_path.write_text(json.dumps(cfg))
    certbot = Certbot(cfg, str(config_path), CA())
    monkeypatch.setattr(server, "run", certbot)
    return {"cfg": cfg, "path": str(config_path), "certbot": certbot, "private": chain}


def _main(box, *args, capsys):
    code = server.main([args[0], box["path"], *args[1:]])
    out = capsys.readouterr().out
    return code, out


def obtain(box, capsys):
    code, out = _main(box, "obtain", capsys=capsys)
    assert code == 0
    return json.loads(out)


def served(box):
    return server.read_cert(box["cfg"]["cert"])


def attempts(box):
    return json.loads(Path(box["cfg"]["status"]).read_text())["attempts"]


def reloads(box):
    return [c for c in box["certbot"].calls if c[:2] == ["systemctl", "try-reload-or-restart"]]


def test_first_request_installs_the_certificate_then_nothing_is_requested_again(box, capsys):
    result = obtain(box, capsys)
    assert result["changed"] and result["ok"] and result["result"] == "issued", result
    cert = served(box)
    assert cert["names"] == [DOMAIN] and cert["issuer"] == "Test ACME Intermediate"
    live = Path(box["cfg"]["certbot_dir"]) / "live" / DOMAIN
    assert Path(box["cfg"]["cert"]).read_bytes() == (live / "fullchain.pem").read_bytes()
    assert Path(box["cfg"]["key"]).read_bytes() == (live / "privkey.pem").read_bytes()
    assert stat.S_IMODE(os.stat(box["cfg"]["key"]).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(box["cfg"]["cert"]).st_mode) == 0o644
    certonly = next(c for c in box["certbot"].calls if c[:2] == ["certbot", "certonly"])
    for flag, value in [("--server", DIRECTORY), ("--webroot-path", box["cfg"]["webroot"]), ("--cert-name", DOMAIN),
                        ("--domains", DOMAIN), ("--email", "ops@example.org"), ("--key-type", "ecdsa")]:
        assert certonly[certonly.index(flag) + 1] == value
    assert {"--webroot", "--keep-until-expiring", "--non-interactive", "--agree-tos"} <= set(certonly)
    assert reloads(box) and ["nginx", "-t"] in box["certbot"].calls  # checked, then reloaded: never restarted
    assert not any("restart" == c[1] for c in box["certbot"].calls if c[0] == "systemctl")
    assert attempts(box)[-1]["result"] == "issued" and attempts(box)[-1]["serial"] == cert["serial"]

    box["certbot"].calls.clear()
    again = obtain(box, capsys)
    assert not again["changed"] and again["ok"] and again["result"] == "kept", again
    assert box["certbot"].calls == []  # a valid certificate for exactly the domain: nothing asked, nothing reloaded
    assert served(box)["serial"] == cert["serial"]


def test_requests_without_contact_and_with_a_ca_bundle(box, capsys):
    box["cfg"].update(email=None, ca_bundle="/etc/appliance/acme-ca.pem")
    Path(box["path"]).write_text(json.dumps(box["cfg"]))
    obtain(box, capsys)
    certonly = next(c for c in box["certbot"].calls if c[:2] == ["certbot", "certonly"])
    assert "--register-unsafely-without-email" in certonly and "--email" not in certonly
    assert box["certbot"].envs[0]["REQUESTS_CA_BUNDLE"] == "/etc/appliance/acme-ca.pem"


def test_no_ca_bundle_leaves_certbots_trust_alone(box, capsys, monkeypatch):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    obtain(box, capsys)
    assert "REQUESTS_CA_BUNDLE" not in box["certbot"].envs[0]


def test_a_failed_first_request_serves_the_private_cas_certificate(box, capsys):
    box["certbot"].fail = challenge_failure(DOMAIN)
    result = obtain(box, capsys)
    assert not result["ok"] and result["result"] == "failed"
    assert result["message"] == (f"{DOMAIN}: DNS problem: SERVFAIL looking up A for {DOMAIN} - the domain's "
                                 "nameservers may be malfunctioning (dns)")
    assert Path(box["cfg"]["cert"]).read_bytes() == box["private"]
    assert result["changed"] and result["serving"].startswith(f"the certificate for {DOMAIN} from Jupyter appliance")
    assert attempts(box)[-1]["ok"] is False and not result["rate_limited"]


def test_a_failed_request_keeps_the_previous_certificate_of_the_domain(box, capsys):
    box["certbot"].days = 20  # due: the next up asks again
    obtain(box, capsys)
    before = served(box)
    box["certbot"].fail = RATE_LIMITED
    box["certbot"].calls.clear()
    result = obtain(box, capsys)
    assert not result["ok"] and result["rate_limited"] and not result["changed"]
    assert result["message"].startswith("Error creating new order :: too many certificates (5) already issued")
    assert served(box)["serial"] == before["serial"] and not reloads(box)


def test_a_new_domain_that_fails_keeps_the_previous_certificate_and_one_that_works_replaces_it(box, capsys):
    obtain(box, capsys)
    old = served(box)
    box["cfg"]["domain"] = "fail.test"
    Path(box["path"]).write_text(json.dumps(box["cfg"]))
    box["certbot"].fail = challenge_failure("fail.test", "connection", "127.0.0.1: Fetching http://fail.test/.well-"
                                                                       "known/acme-challenge/x: Connection refused")
    result = obtain(box, capsys)
    assert not result["ok"] and result["message"].startswith("fail.test: 127.0.0.1: Fetching")
    assert served(box)["serial"] == old["serial"]  # still the one browsers trust for the previous name
    assert (Path(box["cfg"]["certbot_dir"]) / "renewal" / f"{DOMAIN}.conf").exists()  # and it keeps renewing

    box["certbot"].fail = None
    result = obtain(box, capsys)
    assert result["ok"] and served(box)["names"] == ["fail.test"]
    assert sorted(p.name for p in (Path(box["cfg"]["certbot_dir"]) / "renewal").iterdir()) == ["fail.test.conf"]


def test_another_directory_means_a_new_certificate(box, capsys):
    obtain(box, capsys)
    old = served(box)
    box["cfg"]["directory"] = config.LETSENCRYPT_STAGING
    Path(box["path"]).write_text(json.dumps(box["cfg"]))
    result = obtain(box, capsys)
    assert result["result"] == "issued" and served(box)["serial"] != old["serial"]
    assert ["certbot", "delete", "--non-interactive", "--cert-name", DOMAIN] in box["certbot"].calls
    assert f"server = {config.LETSENCRYPT_STAGING}" in (Path(box["cfg"]["certbot_dir"]) / "renewal"
                                                        / f"{DOMAIN}.conf").read_text()


def test_nginx_refusing_the_new_certificate_keeps_the_old_files(box, capsys):
    shutil.copy(box["cfg"]["fallback_cert"], box["cfg"]["cert"])  # as the web role leaves it before asking
    shutil.copy(box["cfg"]["fallback_key"], box["cfg"]["key"])
    box["certbot"].nginx_ok = False
    result = obtain(box, capsys)
    assert not result["ok"] and result["message"].startswith("nginx refused the certificate of ")
    assert result["message"].endswith("the previous one stays: nginx: configuration file test failed")
    assert Path(box["cfg"]["cert"]).read_bytes() == box["private"]  # what it served a moment before
    assert box["certbot"].hook_codes == [1] and not reloads(box)


def test_renewal_not_due_then_forced_then_failed(box, capsys):
    obtain(box, capsys)
    first = served(box)
    box["certbot"].calls.clear()
    code, out = _main(box, "renew", capsys=capsys)
    assert code == 0 and out.startswith("not due: ")
    assert attempts(box)[-1]["action"] == "renewal" and attempts(box)[-1]["result"] == "not due"
    assert served(box)["serial"] == first["serial"] and not reloads(box)
    renew = box["certbot"].calls[0]
    assert renew[:2] == ["certbot", "renew"] and "--force-renewal" not in renew

    code, out = _main(box, "renew", "--force", capsys=capsys)
    assert code == 0 and out.startswith("renewed: ")
    forced = [c for c in box["certbot"].calls if c[:2] == ["certbot", "renew"]][-1]
    assert forced[-3:] == ["--cert-name", DOMAIN, "--force-renewal"]
    assert served(box)["serial"] != first["serial"] and len(reloads(box)) == 1  # the hook reloaded, once
    second = served(box)

    box["certbot"].fail = challenge_failure(DOMAIN)
    code, out = _main(box, "renew", "--force", capsys=capsys)
    assert code == 1 and out.startswith("failed: nb.example.org: DNS problem: SERVFAIL")
    assert served(box)["serial"] == second["serial"]  # the previous certificate stays
    last = attempts(box)[-1]
    assert (last["action"], last["result"], last["ok"]) == ("renewal", "failed", False)


def test_renewal_without_a_certificate_is_a_failure(box, capsys):
    code, out = _main(box, "renew", capsys=capsys)
    assert code == 1 and "no certificate for nb.example.org on this server yet" in out


def test_the_previous_names_certificate_keeps_renewing_even_from_another_intermediate(box, capsys):
    box["certbot"].days = 20  # due at the next renewal
    obtain(box, capsys)
    box["cfg"]["domain"] = "fail.test"
    Path(box["path"]).write_text(json.dumps(box["cfg"]))
    box["certbot"].fail = challenge_failure("fail.test")
    obtain(box, capsys)
    old = served(box)
    box["certbot"].fail, box["certbot"].ca = None, CA("Test ACME Intermediate 2")  # the CA's next intermediate
    code, _ = _main(box, "renew", capsys=capsys)
    assert code == 1  # fail.test has no certificate yet: a failure for the domain asked for
    now = served(box)
    assert now["names"] == [DOMAIN] and now["serial"] != old["serial"] and now["issuer"] == "Test ACME Intermediate 2"


def test_deploy_hook_installs_only_the_appliances_certificate(box, capsys, monkeypatch):
    obtain(box, capsys)
    other = box["certbot"]
    other.save("mail.example.org", ["mail.example.org"], DIRECTORY, None, "/var/www/html")  # not the appliance's
    before = served(box)
    monkeypatch.setenv("RENEWED_LINEAGE", str(Path(box["cfg"]["certbot_dir"]) / "live" / "mail.example.org"))
    code, out = _main(box, "deploy", capsys=capsys)
    assert code == 0 and "nothing to install" in out and served(box)["serial"] == before["serial"]


def test_status_file_keeps_the_last_attempts(box, capsys):
    obtain(box, capsys)
    for _ in range(server.HISTORY + 5):
        _main(box, "renew", capsys=capsys)
    kept = attempts(box)
    assert len(kept) == server.HISTORY and all(a["result"] == "not due" for a in kept)
    assert set(kept[-1]) >= {"time", "action", "domain", "result", "ok", "message", "serving"}


def test_remove_deletes_the_appliances_certificates_timer_and_files_only(box, capsys):
    obtain(box, capsys)
    box["certbot"].save("mail.example.org", ["mail.example.org"], DIRECTORY, None, "/var/www/html")
    box["certbot"].calls.clear()
    code, out = _main(box, "remove", capsys=capsys)
    assert code == 0 and json.loads(out)["deleted"] == [DOMAIN]
    renewal = Path(box["cfg"]["certbot_dir"]) / "renewal"
    assert sorted(p.name for p in renewal.iterdir()) == ["mail.example.org.conf"]
    calls = box["certbot"].calls
    assert ["systemctl", "disable", "--now", "appliance-certbot.timer"] in calls
    assert ["systemctl", "unmask", "certbot.timer"] in calls
    assert ["systemctl", "enable", "--now", "certbot.timer"] in calls  # mail.example.org still needs renewing
    for path in box["cfg"]["remove"]:
        assert not os.path.exists(path), path


def test_remove_leaves_debians_timer_off_when_nothing_else_needs_it(box, capsys):
    obtain(box, capsys)
    box["certbot"].calls.clear()
    assert _main(box, "remove", capsys=capsys)[0] == 0
    assert not list((Path(box["cfg"]["certbot_dir"]) / "renewal").iterdir())
    assert not any(c[:2] == ["systemctl", "enable"] for c in box["certbot"].calls)


# certbot's words, reduced to one line ---------------------------------------------------------------------

@pytest.mark.parametrize("output, reason", [
    (SAVING + "Requesting a certificate for nb.example.org\n" + challenge_failure("nb.example.org", "unauthorized",
     "203.0.113.9: Invalid response from http://nb.example.org/.well-known/acme-challenge/abc: 404") + ADVICE,
     "nb.example.org: 203.0.113.9: Invalid response from http://nb.example.org/.well-known/acme-challenge/abc: 404 "
     "(unauthorized)"),
    (SAVING + RATE_LIMITED + ADVICE, "Error creating new order :: too many certificates (5) already issued for this "
     "exact set of domains in the last 168 hours: nb.example.org, retry after 2026-12-01T10:00:00Z: see "
     "https://letsencrypt.org/docs/rate-limits/#new-certificates-per-exact-set-of-hostnames"),
    (SAVING + "An unexpected error occurred:\nrequests.exceptions.ConnectionError: HTTPSConnectionPool("
     "host='acme.test', port=14000): Max retries exceeded with url: /dir\n" + ADVICE,
     "requests.exceptions.ConnectionError: HTTPSConnectionPool(host='acme.test', port=14000): Max retries exceeded "
     "with url: /dir"),
    (SAVING + "Processing /etc/letsencrypt/renewal/x.org.conf\nFailed to renew certificate x.org with error: "
     "urn:ietf:params:acme:error:badNonce :: JWS has an invalid anti-replay nonce\nAll renewals failed.\n" + ADVICE,
     "urn:ietf:params:acme:error:badNonce :: JWS has an invalid anti-replay nonce"),
    ("\x1b[31mAn unexpected error occurred:\x1b[0m\n\x1b[31mThe CA said \x07\x1b]0;owned\x07 no\x1b[0m\n",
     "The CA said ]0;owned no"),
    ("", "certbot said nothing"),
    (SAVING + "Requesting a certificate for x.test\nAn unexpected error occurred:\n"
     "acme.errors.ClientError: <Response [404]>\n" + ADVICE, "the ACME server answered HTTP 404"),  # certbot 2.1
])
def test_certbots_reason_in_one_line(output, reason):
    assert server.certbot_reason(output) == reason


def test_rate_limits_are_recognised():
    assert server.rate_limited(server.certbot_reason(RATE_LIMITED))
    assert server.rate_limited("urn:ietf:params:acme:error:rateLimited :: too many failed authorizations recently")
    assert not server.rate_limited("DNS problem: NXDOMAIN looking up A for nb.example.org")


# the operator's checks ----------------------------------------------------------------------------------

def resolver(table):
    """A getaddrinfo stand-in: name -> addresses (missing: does not resolve)."""
    def resolve(name, port, family=0, kind=0):
        if name not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, kind, 6, "", (a, 0)) for a in table[name]]
    return resolve


def _acme_cfg(host="203.0.113.10", **flags):
    return config.load({"host": host, "domain": DOMAIN, "tls": "acme", **flags}, env={})


def test_dns_pointing_elsewhere_is_refused_before_anything_changes():
    said = []
    with pytest.raises(DeployError) as refused:
        acme.check_dns(_acme_cfg(), resolve=resolver({DOMAIN: ["198.51.100.7"]}), say=said.append)
    assert str(refused.value).startswith(f"{DOMAIN} resolves to 198.51.100.7, not to the server (203.0.113.10)")
    assert "\n" not in str(refused.value) and not said


def test_dns_that_does_not_resolve_warns_and_continues():
    said = []
    acme.check_dns(_acme_cfg(), resolve=resolver({}), say=said.append)
    assert len(said) == 1 and said[0].startswith(f"warning: {DOMAIN} does not resolve") and "propagating" in said[0]


@pytest.mark.parametrize("host, table, warned", [
    ("203.0.113.10", {DOMAIN: ["203.0.113.10"]}, False),
    ("2001:db8::10", {DOMAIN: ["2001:db8::10", "203.0.113.10"]}, True),    # an A the server may not have
    ("server.example.org", {DOMAIN: ["203.0.113.10"], "server.example.org": ["203.0.113.10"]}, False),
    ("server.example.org", {DOMAIN: ["203.0.113.10"]}, False),            # the host itself does not resolve here
])
def test_dns_pointing_at_the_server_passes(host, table, warned):
    said = []
    acme.check_dns(_acme_cfg(host), resolve=resolver(table), say=said.append)
    assert bool(said) is warned


def test_dns_for_the_local_droplet_is_loopback():
    with pytest.raises(DeployError, match="not to the server .127.0.0.1, ::1."):
        acme.check_dns(config.load({"domain": DOMAIN, "tls": "acme"}, env={}),
                       resolve=resolver({DOMAIN: ["192.0.2.44"]}), say=print)
    acme.check_dns(config.load({"domain": DOMAIN, "tls": "acme"}, env={}), resolve=resolver({DOMAIN: ["::1"]}))


def _tls_files(tmp_path):
    ca = CA("Local ACME test root")
    # the server's certificate must carry the IP it is reached by
    now = datetime.datetime.now(datetime.timezone.utc)
    leaf_key = _key()
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca.name).public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False).sign(ca.key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(_pem_key(leaf_key))
    return ca.cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def directory_server(tmp_path):
    """An HTTPS server on 127.0.0.1: /dir answers like an ACME directory, /json like something else."""
    root_pem = _tls_files(tmp_path)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            bodies = {"/dir": {"newNonce": "u", "newAccount": "u", "newOrder": "u", "revokeCert": "u"},
                      "/json": {"hello": "world"}, "/text": "not json"}
            if self.path not in bodies:
                self.send_error(404)
                return
            body = bodies[self.path] if isinstance(bodies[self.path], str) else json.dumps(bodies[self.path])
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}", root_pem
    finally:
        httpd.shutdown()


def _check_directory_here(url, bundle):
    """remote.py's acme-directory as the server runs it (python3 -c ...), on this machine."""
    r = subprocess.run(["sh", "-c", ssh.remote_command("acme-directory", url)], input=bundle or b"",
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_the_acme_directory_is_checked(directory_server):
    url, root = directory_server
    assert _check_directory_here(f"{url}/dir", root) == {"ok": True, "message": "answers as an ACME directory"}
    assert _check_directory_here(f"{url}/json", root)["message"] == \
        "is not an ACME directory (no newNonce, newAccount, newOrder)"
    assert _check_directory_here(f"{url}/text", root)["message"] == "does not answer with JSON"
    assert _check_directory_here(f"{url}/nope", root)["message"] == "answers HTTP 404"
    untrusted = _check_directory_here(f"{url}/dir", None)
    assert not untrusted["ok"] and untrusted["message"].startswith("fails TLS (") and "--acme-ca-bundle" in \
        untrusted["message"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert _check_directory_here(f"https://127.0.0.1:{closed}/dir", root)["message"].startswith("does not answer (")


def test_a_wrong_directory_is_one_line_before_anything_changes(directory_server, monkeypatch):
    url, root = directory_server

    def remote_here(target, *args, input=b"", **kwargs):
        return subprocess.run(["sh", "-c", ssh.remote_command(*args)], input=input, capture_output=True, timeout=60)
    monkeypatch.setattr(ssh, "remote", remote_here)
    target = ssh.Target("droplet.example", 22, "root", None, "/dev/null", "/tmp")
    acme.check_directory(target, f"{url}/dir", root)
    with pytest.raises(DeployError) as refused:
        acme.check_directory(target, f"{url}/directory", root)
    assert str(refused.value) == (f"the ACME directory {url}/directory answers HTTP 404 (asked from the server "
                                  "droplet.example); give the right one with --acme-directory, or leave it out for "
                                  "Let's Encrypt")


# status -------------------------------------------------------------------------------------------------

def _cert_facts(days):
    return {"days_left": days, "expires": "2027-01-01T00:00:00+00:00", "sha256": "AB", "issuer": "R11"}


ATTEMPT = {"time": "2026-11-25T00:00:00Z", "action": "renewal", "domain": DOMAIN, "result": "not due", "ok": True,
           "message": "not due: ..."}


@pytest.mark.parametrize("days, acme_facts, problem", [
    (60, None, None),
    (14, None, None),
    (13, None, "the TLS certificate expires in 13 days: run up to renew it"),
    (-1, None, "the TLS certificate has expired: run up to renew it"),
    (60, {"timer": "active", "last": ATTEMPT}, None),
    (14, {"timer": "active", "last": ATTEMPT}, None),
    (13, {"timer": "active", "last": ATTEMPT}, "the TLS certificate expires in 13 days: renewal has not succeeded"),
    (60, {"timer": "active", "last": {**ATTEMPT, "ok": False, "result": "failed", "message": "DNS problem"}},
     "the last certificate renewal failed (2026-11-25T00:00:00Z): DNS problem; retry with up, or on the server: "
     "sudo systemctl start appliance-certbot.service"),
    (60, {"timer": "inactive", "last": ATTEMPT}, "the renewal timer appliance-certbot.timer is inactive"),
    (60, {"timer": "active", "last": {**ATTEMPT, "action": "request", "result": "kept"},
          "last_renewal": {**ATTEMPT, "ok": False, "result": "failed", "message": "timeout"}},
     "the last certificate renewal failed (2026-11-25T00:00:00Z): timeout"),  # a later `up` renews nothing
    (60, {"timer": "active", "last": ATTEMPT, "last_renewal": ATTEMPT}, None),
])
def test_certificate_problems(days, acme_facts, problem):
    found = acme.problems(_cert_facts(days), acme_facts)
    if problem is None:
        assert found == []
    else:
        assert len(found) == 1 and found[0].startswith(problem), found


def _status_facts(pem, acme_facts):
    return {"container": {"state": "running", "health": "healthy", "started_at": "2026-11-25T00:00:00.000Z",
                          "restarts": 0, "image_id": "sha256:" + "0" * 64},
            "image": {"tags": ["appliance/scipy:latest"], "size": 1e9, "manifest_sha256": "f" * 64},
            "nginx": "active", "login_verifier": "active", "https": "login required", "certificate_pem": pem,
            "acme": acme_facts, "disks": [{"path": "/", "size": 10e9, "free": 5e9, "low": False}],
            "memory": {"total": 4e9, "available": 2e9}, "server_uptime_s": 100, "now": time.time()}


@pytest.mark.parametrize("days, last_ok, code", [(90, True, 0), (13, True, 1), (90, False, 1), (15, True, 0)])
def test_status_exit_code_follows_expiry_and_the_last_renewal(tmp_path, monkeypatch, days, last_ok, code):
    chain, _ = CA("R11").issue([DOMAIN], days=days)
    acme_facts = {"domain": DOMAIN, "directory": config.LETSENCRYPT, "timer": "active", "timer_enabled": "enabled",
                  "last": {**ATTEMPT, "ok": last_ok, "result": "not due" if last_ok else "failed"},
                  "last_renewal": None}
    cfg = config.load({"host": "192.0.2.1", "state_dir": str(tmp_path)}, env={})

    @contextlib.contextmanager
    def session(cfg, say):
        yield None, ops.State(cfg.target_dir).ensure()
    monkeypatch.setattr(ops, "session", session)
    monkeypatch.setattr(ssh, "remote_json", lambda target, *args: _status_facts(chain.decode(), acme_facts))
    said = []
    assert ops.status(cfg, say=said.append) == code
    text = said[0]
    assert "from R11" in text and "renewal:     Let's Encrypt for nb.example.org, appliance-certbot.timer active" \
        in text and "last attempt: 2026-11-25T00:00:00Z renewal" in text
    assert ("FAILED" in text) is (not last_ok)
    said.clear()
    ops.status(cfg, as_json=True, say=said.append)
    facts = json.loads(said[0])
    assert facts["certificate"]["issuer"] == "R11" and facts["acme"]["last"]["ok"] is last_ok
    assert facts["certificate"]["days_left"] in (days - 1, days)


def test_up_ends_with_one_line_when_no_certificate_came(tmp_path):
    cfg = _acme_cfg(state_dir=str(tmp_path))
    last = {"message": "fail.test: DNS problem: SERVFAIL looking up A for fail.test (dns)", "rate_limited": False,
            "serving": "the certificate for nb.example.org from Test ACME (valid until 2027-02-01)"}
    line = acme.failure(cfg, last)
    assert "\n" not in line and line.startswith("no certificate from Let's Encrypt for nb.example.org: fail.test: DNS")
    assert "keeps serving the certificate for nb.example.org from Test ACME" in line
    assert line.endswith("run the same up again")
    limited = acme.failure(cfg, {**last, "rate_limited": True})
    assert acme.RATE_LIMITS in limited and config.LETSENCRYPT_STAGING in limited


# rendering ----------------------------------------------------------------------------------------------

def _rendered(tmp_path, **flags):
    cfg = config.load({"host": "192.0.2.1", "state_dir": str(tmp_path / "state"), **flags}, env={})
    state, _, _ = render.prepare(cfg, interactive=False, env={"APPLIANCE_PASSWORD": "a long test password"})
    files = render.render(cfg, state, tmp_path / "out")
    return cfg, state, {f.path: f for f in files}


ACME_FLAGS = {"domain": DOMAIN, "tls": "acme", "acme_email": "ops@example.org"}


def test_acme_files_and_their_modes(tmp_path):
    _, state, files = _rendered(tmp_path, **ACME_FLAGS)
    assert layout.TLS_CERT not in files and layout.TLS_KEY not in files  # the server's business now
    assert (files[layout.FALLBACK_KEY].mode, files[layout.FALLBACK_KEY].secret) == ("0600", True)
    assert (tmp_path / "out" / layout.FALLBACK_CERT.lstrip("/")).read_bytes() == state.read("server.crt")
    assert files[layout.ACME_UNIT].service == files[layout.ACME_TIMER_UNIT].service == layout.ACME_SERVICE
    assert files[layout.ACME_SCRIPT].service == files[layout.ACME_CONFIG].service == ""
    assert layout.ACME_CA_BUNDLE not in files
    assert list(files).index(layout.ACME_CONFIG) < list(files).index(layout.ACME_SCRIPT)
    settings = json.loads((tmp_path / "out" / layout.ACME_CONFIG.lstrip("/")).read_text())
    assert (settings["domain"], settings["email"], settings["directory"], settings["ca_bundle"]) == \
        (DOMAIN, "ops@example.org", config.LETSENCRYPT, None)
    assert (settings["cert"], settings["key"], settings["webroot"]) == (layout.TLS_CERT, layout.TLS_KEY,
                                                                        layout.ACME_WEBROOT)
    assert settings["remove"][-1] == layout.ACME_CONFIG and layout.ACME_TIMER_UNIT in settings["remove"]
    assert layout.TLS_CERT not in settings["remove"] and layout.CERTBOT_DIR not in settings["remove"]
    unit = (tmp_path / "out" / layout.ACME_UNIT.lstrip("/")).read_text()
    assert f"ExecStart=/usr/bin/python3 {layout.ACME_SCRIPT} renew {layout.ACME_CONFIG}\n" in unit
    timer = (tmp_path / "out" / layout.ACME_TIMER_UNIT.lstrip("/")).read_text()
    assert "OnCalendar=*-*-* 00,12:00:00" in timer and "Persistent=true" in timer
    shipped = (tmp_path / "out" / layout.ACME_SCRIPT.lstrip("/")).read_bytes()
    assert shipped == Path(server.__file__).read_bytes()


def test_the_ca_bundle_travels_as_certificates_only(tmp_path):
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(b"junk before\n" + CA().cert.public_bytes(serialization.Encoding.PEM) + _pem_key(_key()))
    _, _, files = _rendered(tmp_path, **ACME_FLAGS, acme_directory="https://127.0.0.1:14000/dir",
                            acme_ca_bundle=str(bundle))
    assert files[layout.ACME_CA_BUNDLE].mode == "0644"
    sent = (tmp_path / "out" / layout.ACME_CA_BUNDLE.lstrip("/")).read_bytes()
    assert sent.startswith(b"-----BEGIN CERTIFICATE-----") and b"PRIVATE" not in sent and b"junk" not in sent
    settings = json.loads((tmp_path / "out" / layout.ACME_CONFIG.lstrip("/")).read_text())
    assert (settings["ca_bundle"], settings["directory"]) == (layout.ACME_CA_BUNDLE, "https://127.0.0.1:14000/dir")
    assert layout.ACME_CA_BUNDLE in settings["remove"]


def test_the_private_ca_renders_as_before(tmp_path):
    _, _, files = _rendered(tmp_path, domain=DOMAIN)
    assert layout.TLS_CERT in files and layout.TLS_KEY in files
    assert not {layout.ACME_CONFIG, layout.ACME_SCRIPT, layout.ACME_UNIT, layout.FALLBACK_CERT} & set(files)
    site = (tmp_path / "out" / layout.NGINX_SITE.lstrip("/")).read_text()
    assert "acme-challenge" not in site and "    return 308 https://nb.example.org$request_uri;\n}" in site


def test_the_acme_site_answers_the_challenge_on_port_80_only(tmp_path):
    _, _, files = _rendered(tmp_path, **ACME_FLAGS)
    site = (tmp_path / "out" / layout.NGINX_SITE.lstrip("/")).read_text()
    port80 = site[site.index("listen 80 "):site.index("server {", site.index("listen 80 "))]
    assert f"location ^~ /.well-known/acme-challenge/ {{\n        root {layout.ACME_WEBROOT};" in port80
    assert "disable_symlinks on;" in port80 and "return 308 https://nb.example.org$request_uri;" in port80
    assert "acme-challenge" not in site[site.index("listen 443"):]


def test_role_inputs_carry_the_mode(tmp_path):
    assert deploy.role_inputs(_acme_cfg())["web_tls"] == "acme"
    assert deploy.role_inputs(config.load({"host": "192.0.2.1"}, env={}))["web_tls"] == "private"


# the port-80 site in a real nginx -------------------------------------------------------------------------

@pytest.fixture
def nginx_site():
    """nginx serving the rendered --tls acme site (paths rebased under a temporary directory)."""
    if not shutil.which("nginx") or os.geteuid() != 0:
        pytest.skip("needs root and Debian's nginx (tests/run.py installs it)")
    with acme_harness.acme_site(DOMAIN, {"acme_email": "ops@example.org"}) as site:
        yield {"port": site["http_port"], "challenge": site["challenge"], "base": site["base"]}


def _get80(site, path, host=DOMAIN):
    conn = http.client.HTTPConnection("127.0.0.1", site["port"], timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host})
        r = conn.getresponse()
        return r.status, r.headers, r.read()
    finally:
        conn.close()


def test_port_80_serves_the_challenge_files_and_redirects_everything_else(nginx_site):
    token = "Xy_z-0123456789abcdefABCDEF"
    (nginx_site["challenge"] / token).write_text(f"{token}.thumbprint")
    os.chmod(nginx_site["challenge"] / token, 0o644)
    status, headers, body = _get80(nginx_site, f"/.well-known/acme-challenge/{token}")
    assert (status, body) == (200, f"{token}.thumbprint".encode())
    assert headers["Content-Type"] == "text/plain" and headers["Strict-Transport-Security"]
    assert _get80(nginx_site, "/.well-known/acme-challenge/missing")[0] == 404
    assert _get80(nginx_site, "/.well-known/acme-challenge/")[0] in (403, 404)  # no listing
    (nginx_site["challenge"] / "passwd").symlink_to("/etc/passwd")
    assert _get80(nginx_site, "/.well-known/acme-challenge/passwd")[0] in (403, 404)  # no link followed
    (nginx_site["base"] / "webroot" / "secret.txt").write_text("outside the challenge directory")
    os.chmod(nginx_site["base"] / "webroot" / "secret.txt", 0o644)
    for path in ["/secret.txt", "/.well-known/acme-challenge/../../secret.txt", "/.well-known/secret.txt",
                 "/.well-known/acme-challenge/..%2f..%2fsecret.txt", "/lab?x=1"]:
        status, headers, body = _get80(nginx_site, path)
        assert b"outside the challenge" not in body, path
        assert status in (308, 404), (path, status)
    status, headers, _ = _get80(nginx_site, "/lab?x=1")
    assert status == 308 and headers["Location"].startswith("https://nb.example.org:") and \
        headers["Location"].endswith("/lab?x=1")


@pytest.mark.parametrize("served_is_private, last, error", [
    (False, {"ok": True, "result": "issued"}, None),
    (True, {"ok": False, "result": "failed", "message": "nb.example.org: DNS problem (dns)", "rate_limited": False,
            "serving": "the certificate for nb.example.org from Jupyter appliance CA"}, "nb.example.org: DNS problem"),
    (False, {"ok": False, "result": "failed", "message": "too many certificates", "rate_limited": True,
             "serving": "the certificate for nb.example.org from R11"}, "too many certificates"),
    (True, None, "no attempt was recorded"),
])
def test_ups_summary_of_the_acme_certificate(tmp_path, monkeypatch, served_is_private, last, error):
    cfg = _acme_cfg(state_dir=str(tmp_path))
    state, cert, _ = render.prepare(cfg, interactive=False, env={"APPLIANCE_PASSWORD": "a long test password"})
    pem = state.read("server.crt").decode() if served_is_private else CA("R11").issue([DOMAIN])[0].decode()
    monkeypatch.setattr(deploy, "remote_json", lambda target, *args: {
        "certificate_pem": pem, "acme": {"last": last} if last else None})
    said = []
    if error is None:
        deploy.certificate_summary(cfg, None, cert, state, said.append)
    else:
        with pytest.raises(DeployError) as failed:
            deploy.certificate_summary(cfg, None, cert, state, said.append)
        assert error in str(failed.value) and "\n" not in str(failed.value)
    assert said[0].startswith("  certificate:   from ")
    assert any("meanwhile:     import" in line for line in said) is (served_is_private and error is not None)
    assert any("renewal:       on the server" in line for line in said) is (error is None)


def test_the_servers_acme_facts(tmp_path, monkeypatch, capsys):
    """remote.py's side of status and up: settings, timer, the last attempt and the last renewal."""
    from appliance.server import remote
    monkeypatch.setattr(remote, "_run", lambda *cmd: {"is-active": "active", "is-enabled": "enabled"}[cmd[1]])
    config_path, status_path = tmp_path / "acme.json", tmp_path / "acme-status.json"
    assert remote._acme(str(config_path), str(status_path), "appliance-certbot.timer") is None  # --tls private
    config_path.write_text(json.dumps({"domain": DOMAIN, "directory": DIRECTORY}))
    renewal = {**ATTEMPT, "result": "renewed"}
    request = {**ATTEMPT, "action": "request", "result": "kept"}
    status_path.write_text(json.dumps({"attempts": [ATTEMPT, renewal, request]}))
    facts = remote._acme(str(config_path), str(status_path), "appliance-certbot.timer")
    assert facts == {"domain": DOMAIN, "directory": DIRECTORY, "timer": "active", "timer_enabled": "enabled",
                     "last": request, "last_renewal": renewal}
    status_path.write_text("not json")
    assert remote._acme(str(config_path), str(status_path), "x.timer")["last"] is None
    cert = tmp_path / "server.crt"
    cert.write_bytes(CA().issue([DOMAIN])[0])
    remote.acme(str(config_path), str(status_path), "x.timer", str(cert))
    out = json.loads(capsys.readouterr().out)
    assert out["acme"]["domain"] == DOMAIN and acme.certificate(out["certificate_pem"])["issuer"] == \
        "Test ACME Intermediate"


def test_a_hosts_file_can_answer_the_dns_check(tmp_path, monkeypatch):
    """Tests point the check at a hosts file: no DNS query leaves the machine."""
    hosts = tmp_path / "hosts"
    hosts.write_text("# test names\n\n127.0.0.1 appliance.test www.appliance.test\n::1 appliance.test\n")
    monkeypatch.setenv(acme.HOSTS_ENV, str(hosts))
    resolve = acme.system_resolver()
    assert acme._addresses("appliance.test", resolve) == {"127.0.0.1", "::1"}
    assert acme._addresses("www.appliance.test", resolve) == {"127.0.0.1"}
    assert acme._addresses("elsewhere.test", resolve) == set()
    said = []
    acme.check_dns(config.load({"domain": "appliance.test", "tls": "acme"}, env={}), say=said.append)
    assert said == []  # the local droplet's loopback: it matches
    monkeypatch.delenv(acme.HOSTS_ENV)
    assert acme.system_resolver() is socket.getaddrinfo
