"""--tls acme on this machine, without Docker: the rendered site in a real nginx, and a real ACME server
(Debian's Pebble with pebble-challtestsrv as its DNS) on free ports of 127.0.0.1."""
import contextlib
import dataclasses
import datetime
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance import config, layout, render
from appliance.server import authd


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, what, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError):
            if check():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def listening(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def acme_site(domain, flags=None):
    """nginx serving the rendered --tls acme site, every path rebased under a temporary directory (0755, as
    nginx's workers walk into it). Yields base, the http/https ports, the webroot, the nginx.conf, the paths of
    the served certificate and key and of the private CA's copies (as the web role leaves them)."""
    base = Path(tempfile.mkdtemp(prefix="appliance-acme-"))
    os.chmod(base, 0o755)
    http_port, https_port = free_port(), free_port()
    cfg = config.load({"host": "127.0.0.1", "state_dir": str(base / "state"), "https_port": https_port,
                       "public_https_port": https_port, "domain": domain, "tls": "acme", **(flags or {})}, env={})
    cfg = dataclasses.replace(cfg, http_port=http_port)  # a free port here; on a server it is 80 (HTTP-01)
    state, _, _ = render.prepare(cfg, interactive=False, env={"APPLIANCE_PASSWORD": "a long test password"})
    out = base / "out"
    render.render(cfg, state, out)
    tls_dir = out / layout.TLS_DIR.lstrip("/")
    paths = {"cert": tls_dir / "server.crt", "key": tls_dir / "server.key", "fallback_cert": tls_dir / "private.crt",
             "fallback_key": tls_dir / "private.key"}
    shutil.copy(paths["fallback_cert"], paths["cert"])  # what the web role does before nginx starts
    shutil.copy(paths["fallback_key"], paths["key"])
    webroot = base / "webroot"
    (webroot / ".well-known/acme-challenge").mkdir(parents=True)
    for d in (webroot, webroot / ".well-known", webroot / ".well-known/acme-challenge"):
        os.chmod(d, 0o755)
    site = out / layout.NGINX_SITE.lstrip("/")
    site.write_text(site.read_text().replace(layout.ETC, f"{out}{layout.ETC}").replace(layout.LIB, f"{out}{layout.LIB}")
                    .replace(layout.ACME_WEBROOT, str(webroot)).replace(layout.NGINX_ACCESS_LOG, f"{base}/access.log")
                    .replace(layout.JUPYTER_SOCKET_DIR, f"{base}/run")
                    .replace(str(Path(layout.AUTH_SOCKET).parent), f"{base}/auth"))
    # nginx's part of the session check, made on the server (no key here: a random one, no cookie is good)
    authd.nginx_secret(None, out / layout.HTPASSWD.lstrip("/"), out / layout.SESSION_NGINX.lstrip("/"))
    conf = base / "nginx.conf"
    conf.write_text(f"user www-data;\nworker_processes 1;\npid {base}/nginx.pid;\nerror_log {base}/error.log;\n"
                    "include /etc/nginx/modules-enabled/*.conf;\n"  # as Debian's nginx.conf
                    f"events {{ worker_connections 64; }}\nhttp {{\n    include /etc/nginx/mime.types;\n"
                    f"    access_log {base}/access.log;\n    client_body_temp_path {base}/body;\n"
                    f"    proxy_temp_path {base}/proxy;\n    include {site};\n}}\n")
    check = subprocess.run(["nginx", "-t", "-c", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    nginx = subprocess.Popen(["nginx", "-c", str(conf), "-g", "daemon off;"])
    try:
        wait_for(lambda: listening(http_port) and listening(https_port), "nginx")
        yield {"base": base, "http_port": http_port, "https_port": https_port, "webroot": webroot,
               "challenge": webroot / ".well-known/acme-challenge", "conf": conf, "pid": base / "nginx.pid",
               "out": out, "state": state, **{k: str(v) for k, v in paths.items()}}
    finally:
        nginx.terminate()
        nginx.wait(10)
        shutil.rmtree(base, ignore_errors=True)


def listener_certificate(directory):
    """Pebble's API listener (the package ships none): a CA and a certificate for 127.0.0.1 and localhost,
    written as ca.pem, cert.pem, key.pem under directory."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Pebble listener test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    directory = Path(directory)
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "cert.pem").write_bytes(cert.public_bytes(pem))
    (directory / "key.pem").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    return {name: str(directory / f"{name}.pem") for name in ("ca", "cert", "key")}


class Pebble:
    """Pebble and pebble-challtestsrv on free ports of 127.0.0.1; challtestsrv answers every name with
    127.0.0.1 (no AAAA: Pebble dials the first address it gets), and Pebble's HTTP-01 check goes to
    http_port there."""

    def __init__(self, directory, http_port):
        self.dir = Path(directory)
        self.ports = {name: free_port() for name in ("api", "management", "dns", "challtestsrv")}
        self.files = listener_certificate(self.dir)
        self.directory = f"https://127.0.0.1:{self.ports['api']}/dir"
        config_file = self.dir / "pebble-config.json"
        config_file.write_text(json.dumps({"pebble": {
            "listenAddress": f"127.0.0.1:{self.ports['api']}",
            "managementListenAddress": f"127.0.0.1:{self.ports['management']}",
            "certificate": self.files["cert"], "privateKey": self.files["key"], "httpPort": http_port,
            "tlsPort": free_port(), "ocspResponderURL": "", "externalAccountBindingRequired": False}}))
        self.logs = [open(self.dir / name, "w") for name in ("challtestsrv.log", "pebble.log")]
        self.processes = [
            subprocess.Popen(["pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6=", "-http01=",
                              "-https01=", "-tlsalpn01=", "-dns01", f"127.0.0.1:{self.ports['dns']}",
                              "-management", f"127.0.0.1:{self.ports['challtestsrv']}"],
                             stdout=self.logs[0], stderr=subprocess.STDOUT),
            subprocess.Popen(["pebble", "-config", str(config_file), "-dnsserver", f"127.0.0.1:{self.ports['dns']}"],
                             stdout=self.logs[1], stderr=subprocess.STDOUT,
                             # no random badNonce rejections (Pebble's default: 5 % of requests; certbot
                             # retries once, so two in a row failed a renewal now and then)
                             env={**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_VA_ALWAYS_VALID": "0",
                                  "PEBBLE_AUTHZREUSE": "0", "PEBBLE_WFE_NONCEREJECT": "0"})]
        self.context = ssl.create_default_context(cafile=self.files["ca"])
        wait_for(lambda: "newOrder" in json.loads(self.get(self.directory)), "Pebble's directory")
        wait_for(lambda: listening(self.ports["challtestsrv"]), "pebble-challtestsrv")

    def get(self, url):
        return urllib.request.urlopen(url, context=self.context, timeout=10).read().decode()

    def root(self):
        """Pebble's root CA (a new one each time Pebble starts)."""
        return self.get(f"https://127.0.0.1:{self.ports['management']}/roots/0")

    def dns(self, action, host):
        """challtestsrv's management API, e.g. dns("set-servfail", "fail.test")."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.ports['challtestsrv']}/{action}",
                                         data=json.dumps({"host": f"{host}."}).encode())
        with urllib.request.urlopen(request, timeout=10) as r:
            assert r.status == 200

    def close(self):
        for process in self.processes:
            process.terminate()
            process.wait(10)
        for log in self.logs:
            log.close()
