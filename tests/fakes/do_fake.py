"""A small fake of the DigitalOcean v2 endpoints appliance/cloud/digitalocean.py uses, on 127.0.0.1.

Every request is checked against DigitalOcean's published OpenAPI schema (do_openapi_subset.json, made by
extract_do_schema.py): a body or a query parameter the real API would refuse fails the request with 400 and
is recorded in `errors`, which the tests assert empty. Sizes, regions, the droplet limit and the token are
checked the way the API does (401 / 422 with its messages). "Creating" a droplet starts nothing here unless
a `servers` is given (tests/fakes/local_cloud.py: the e2e tests boot a local droplet there).
"""
import _thread
import itertools
import json
import re
import ssl
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import jsonschema

SCHEMAS = json.loads(Path(__file__).with_name("do_openapi_subset.json").read_text())
SIZES = {"s-1vcpu-1gb", "s-1vcpu-2gb", "s-2vcpu-2gb", "s-2vcpu-4gb", "s-4vcpu-8gb"}
REGIONS = {"ams3", "blr1", "fra1", "lon1", "nyc1", "nyc3", "sfo3", "sgp1", "syd1", "tor1"}
MUTATING = ("POST", "DELETE")


def _route(method, path):
    for key in SCHEMAS:
        m, template = key.split(" ", 1)
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
        found = re.fullmatch(pattern, path)
        if m == method and found:
            return key, found.groupdict()
    return None, None


class FakeDigitalOcean:
    def __init__(self, token="do-test-token", droplet_limit=10, servers=None, active_after=2):
        self.token, self.droplet_limit, self.servers, self.active_after = token, droplet_limit, servers, active_after
        self.keys, self.firewalls, self.volumes, self.droplets, self.snapshots = {}, {}, {}, {}, {}
        self.calls, self.errors = [], []
        self.interrupt_at = None  # interrupt the client (as Ctrl+C) after this many mutating calls
        self._ids = itertools.count(1000)
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _do(self):
                with fake._lock:
                    status, body = fake.handle(self.command, self.path, self.headers, self.rfile.read(
                        int(self.headers.get("Content-Length") or 0)))
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                if fake.interrupt_at is not None and self.command in MUTATING:
                    fake.interrupt_at -= 1
                    if fake.interrupt_at == 0:  # the response went out: Ctrl+C lands right after it
                        _thread.interrupt_main()

            do_GET = do_POST = do_DELETE = do_PUT = _do

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # HTTPS, as the real API: pydo (azure-core) sends a bearer token over TLS only. Clients trust
        # self.ca_file (tests set REQUESTS_CA_BUNDLE to it).
        self.ca_file = self._certificate()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ca_file)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _certificate(self):
        """A self-signed certificate for 127.0.0.1 (with its key, in one PEM file)."""
        import ipaddress
        import tempfile
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake DigitalOcean API")])
        now = datetime.now(timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now)
                .not_valid_after(now.replace(year=now.year + 1))
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                .sign(key, hashes.SHA256()))
        self._dir = tempfile.TemporaryDirectory(prefix="do-fake-")
        path = Path(self._dir.name) / "fake.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return str(path)

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self._dir.cleanup()

    def mutations(self):
        return [c for c in self.calls if c.split(" ", 1)[0] in MUTATING]

    def resources(self):
        return {"keys": len(self.keys), "firewalls": len(self.firewalls), "volumes": len(self.volumes),
                "droplets": len(self.droplets), "snapshots": len(self.snapshots)}

    # --- request checking ------------------------------------------------------------------------
    def handle(self, method, raw_path, headers, raw_body):
        url = urlsplit(raw_path)
        key, params = _route(method, unquote(url.path))
        self.calls.append(f"{method} {url.path}")
        if key is None:
            self.errors.append(f"{method} {url.path}: not an endpoint the fake knows")
            return 404, {"id": "not_found", "message": "The resource you were accessing could not be found."}
        if headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {"id": "Unauthorized", "message": "Unable to authenticate you"}
        spec = SCHEMAS[key]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        problems = []
        for name, param in spec["parameters"].items():
            value = params.get(name) if param["in"] == "path" else query.get(name)
            if value is None:
                if param["required"]:
                    problems.append(f"missing parameter {name}")
                continue
            if param["schema"].get("type") == "integer":
                if not value.isdigit():
                    problems.append(f"parameter {name}={value!r} is not an integer")
                    continue
                value = int(value)
            problems += [f"parameter {name}: {e.message}" for e in
                         jsonschema.Draft7Validator(param["schema"]).iter_errors(value)]
        problems += [f"unknown query parameter {name}" for name in query if name not in spec["parameters"]]
        body = None
        if raw_body:
            try:
                body = json.loads(raw_body)
            except ValueError:
                problems.append("body is not JSON")
        if "body" in spec:
            if body is None and spec["body_required"]:
                problems.append("missing body")
            elif body is not None:
                problems += [f"body: {e.message}" for e in jsonschema.Draft7Validator(spec["body"]).iter_errors(body)]
        elif body is not None:
            problems.append("a body where the endpoint takes none")
        if problems:
            self.errors.append(f"{key}: {'; '.join(problems)}")
            return 400, {"id": "bad_request", "message": "; ".join(problems)}
        return getattr(self, "_" + re.sub(r"\W+", "_", key).strip("_").lower())(params, query, body)

    def _new_id(self):
        return next(self._ids)

    @staticmethod
    def _now():
        return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    @staticmethod
    def _not_found():
        return 404, {"id": "not_found", "message": "The resource you were accessing could not be found."}

    # --- SSH keys --------------------------------------------------------------------------------
    def _get_v2_account_keys_ssh_key_identifier(self, p, q, body):
        ref = p["ssh_key_identifier"]
        found = next((k for k in self.keys.values() if ref in (str(k["id"]), k["fingerprint"])), None)
        return (200, {"ssh_key": found}) if found else self._not_found()

    def _post_v2_account_keys(self, p, q, body):
        import base64
        import hashlib
        digest = hashlib.md5(base64.b64decode(body["public_key"].split()[1])).hexdigest()
        fingerprint = ":".join(digest[i:i + 2] for i in range(0, 32, 2))
        if any(k["fingerprint"] == fingerprint for k in self.keys.values()):
            return 422, {"id": "unprocessable_entity", "message": "SSH Key is already in use on your account"}
        key = {"id": self._new_id(), "fingerprint": fingerprint, "public_key": body["public_key"], "name": body["name"]}
        self.keys[key["id"]] = key
        return 201, {"ssh_key": key}

    def _delete_v2_account_keys_ssh_key_identifier(self, p, q, body):
        found = self._get_v2_account_keys_ssh_key_identifier(p, q, body)
        if found[0] != 200:
            return found
        del self.keys[found[1]["ssh_key"]["id"]]
        return 204, None

    # --- firewalls -------------------------------------------------------------------------------
    def _get_v2_firewalls(self, p, q, body):
        return 200, {"firewalls": list(self.firewalls.values()), "links": {}, "meta": {"total": len(self.firewalls)}}

    def _post_v2_firewalls(self, p, q, body):
        if any(f["name"] == body["name"] for f in self.firewalls.values()):
            return 409, {"id": "conflict", "message": "a firewall with this name exists"}
        fw = {**body, "id": f"fw-{self._new_id()}", "status": "succeeded", "created_at": self._now(),
              "droplet_ids": [], "pending_changes": []}
        self.firewalls[fw["id"]] = fw
        return 202, {"firewall": fw}

    def _delete_v2_firewalls_firewall_id(self, p, q, body):
        return (204, self.firewalls.pop(p["firewall_id"]) and None) if p["firewall_id"] in self.firewalls \
            else self._not_found()

    # --- volumes and their snapshots -------------------------------------------------------------
    def _get_v2_volumes(self, p, q, body):
        found = [v for v in self.volumes.values() if q.get("name") in (None, v["name"])
                 and q.get("region") in (None, v["region"]["slug"])]
        return 200, {"volumes": found, "links": {}, "meta": {"total": len(found)}}

    def _post_v2_volumes(self, p, q, body):
        if body["region"] not in REGIONS:
            return 422, {"id": "unprocessable_entity", "message": "invalid region"}
        volume = {**body, "id": f"vol-{self._new_id()}", "region": {"slug": body["region"]}, "droplet_ids": [],
                  "created_at": self._now()}
        self.volumes[volume["id"]] = volume
        return 201, {"volume": volume}

    def _delete_v2_volumes_volume_id(self, p, q, body):
        volume = self.volumes.get(p["volume_id"])
        if volume is None:
            return self._not_found()
        if volume["droplet_ids"]:
            return 409, {"id": "conflict", "message": "Volume is attached to a Droplet; detach it first"}
        del self.volumes[volume["id"]]
        if self.servers:
            self.servers.delete_volume(volume["id"])
        return 204, None

    def _post_v2_volumes_volume_id_snapshots(self, p, q, body):
        if p["volume_id"] not in self.volumes:
            return self._not_found()
        snap = {"id": f"snap-{self._new_id()}", "name": body["name"], "created_at": self._now(),
                "resource_id": p["volume_id"], "resource_type": "volume", "size_gigabytes": 1,
                "tags": body.get("tags") or [], "regions": [], "min_disk_size": 10}
        self.snapshots[snap["id"]] = snap
        return 201, {"snapshot": snap}

    def _get_v2_volumes_volume_id_snapshots(self, p, q, body):
        found = [s for s in self.snapshots.values() if s["resource_id"] == p["volume_id"]]
        return 200, {"snapshots": found, "links": {}, "meta": {"total": len(found)}}

    def _delete_v2_volumes_snapshots_snapshot_id(self, p, q, body):
        return (204, self.snapshots.pop(p["snapshot_id"]) and None) if p["snapshot_id"] in self.snapshots \
            else self._not_found()

    # --- droplets --------------------------------------------------------------------------------
    def _get_v2_droplets(self, p, q, body):
        found = [self._show(d) for d in self.droplets.values() if q.get("tag_name") in (None, *d["tags"])]
        return 200, {"droplets": found, "links": {}, "meta": {"total": len(found)}}

    def _post_v2_droplets(self, p, q, body):
        if body["size"] not in SIZES:
            return 422, {"id": "unprocessable_entity", "message": "You specified an invalid size for Droplet creation."}
        if body["region"] not in REGIONS:
            return 422, {"id": "unprocessable_entity",
                         "message": "You specified an invalid region for Droplet creation."}
        if len(self.droplets) >= self.droplet_limit:
            return 422, {"id": "unprocessable_entity", "message": "creating this/these droplet(s) will exceed "
                         "your droplet limit"}
        for ref in body.get("ssh_keys", []):
            if not any(str(ref) in (str(k["id"]), k["fingerprint"]) for k in self.keys.values()):
                return 422, {"id": "unprocessable_entity", "message": f"SSH key {ref} is not on the account"}
        for vol in body.get("volumes", []):
            if vol not in self.volumes or self.volumes[vol]["region"]["slug"] != body["region"]:
                return 422, {"id": "unprocessable_entity", "message": f"volume {vol} is not in {body['region']}"}
        droplet = {"id": self._new_id(), "name": body["name"], "status": "new", "polls": 0,
                   "region": {"slug": body["region"]}, "size_slug": body["size"], "tags": body.get("tags", []),
                   "volume_ids": body.get("volumes", []), "user_data": body.get("user_data"),
                   "networks": {"v4": [], "v6": []}, "created_at": self._now()}
        for vol in droplet["volume_ids"]:
            self.volumes[vol]["droplet_ids"] = [droplet["id"]]
        self.droplets[droplet["id"]] = droplet
        if self.servers:  # DigitalOcean shows an attached volume at /dev/disk/by-id/scsi-0DO_Volume_<name>
            keys = [k["public_key"] for k in self.keys.values()
                    if str(k["id"]) in map(str, body.get("ssh_keys", [])) or k["fingerprint"] in body.get("ssh_keys", [])]
            self.servers.boot(droplet["id"], body["name"], body.get("user_data"), keys, {
                vol: f"/dev/disk/by-id/scsi-0DO_Volume_{self.volumes[vol]['name']}" for vol in droplet["volume_ids"]})
        return 202, {"droplet": self._show(droplet)}

    def _show(self, droplet):
        return {k: v for k, v in droplet.items() if k not in ("polls", "user_data")}

    def _get_v2_droplets_droplet_id(self, p, q, body):
        droplet = self.droplets.get(int(p["droplet_id"]))
        if droplet is None:
            return self._not_found()
        droplet["polls"] += 1
        if droplet["status"] == "new" and droplet["polls"] >= self.active_after:
            droplet["status"] = "active"
            droplet["networks"]["v4"] = [{"ip_address": droplet.get("address", "127.0.0.1"), "type": "public",
                                          "netmask": "255.255.255.0", "gateway": "127.0.0.254"}]
        return 200, {"droplet": self._show(droplet)}

    def _delete_v2_droplets_droplet_id(self, p, q, body):
        droplet = self.droplets.pop(int(p["droplet_id"]), None)
        if droplet is None:
            return self._not_found()
        if self.servers:
            self.servers.destroy(droplet["id"])
        for vol in droplet["volume_ids"]:
            if vol in self.volumes:
                self.volumes[vol]["droplet_ids"] = []
        return 204, None
