"""DigitalOcean through its official client, pydo. The token comes from $DIGITALOCEAN_TOKEN or doctl's config
file (~/.config/doctl/config.yaml, `access-token`), nowhere else.

Test-only: $APPLIANCE_TEST_DIGITALOCEAN_ENDPOINT points pydo at a local fake of the v2 API.
"""
import base64
import contextlib
import hashlib
import os
from pathlib import Path

from ..errors import CloudError
from . import Server

IMAGE = "debian-12-x64"
ENDPOINT_ENV = "APPLIANCE_TEST_DIGITALOCEAN_ENDPOINT"


def token():
    if os.environ.get("DIGITALOCEAN_TOKEN"):
        return os.environ["DIGITALOCEAN_TOKEN"]
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "doctl" / "config.yaml"
    with contextlib.suppress(OSError):
        import yaml
        found = (yaml.safe_load(config.read_text()) or {}).get("access-token")
        if found:
            return found
    raise CloudError("no DigitalOcean token: set DIGITALOCEAN_TOKEN (an API token with write scope) or log in "
                     "with `doctl auth init`")


def md5_fingerprint(pubkey):
    """aa:bb:... as DigitalOcean shows an SSH key's fingerprint (MD5 of the key blob)."""
    digest = hashlib.md5(base64.b64decode(pubkey.split()[1])).hexdigest()
    return ":".join(digest[i:i + 2] for i in range(0, 32, 2))


class DigitalOcean:
    title = "DigitalOcean"
    login = "root"         # the image's SSH login
    running = "active"

    def __init__(self, cfg):
        import pydo
        kwargs = {"endpoint": os.environ[ENDPOINT_ENV]} if os.environ.get(ENDPOINT_ENV) else {}
        self.client = pydo.Client(token=token(), **kwargs)
        self.region, self.size, self.volume_gb = cfg.region or "fra1", cfg.size, cfg.volume_gb
        self.ssh_port, self.http_port, self.https_port = cfg.ssh_port, cfg.http_port, cfg.https_port
        self.ssh_from, self.user = cfg.ssh_from, cfg.user

    def call(self, method, *args, **kwargs):
        """One API call; its failures as one line."""
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError
        try:
            found = method(*args, **kwargs)
            # pydo hands back the error body of a documented 404 instead of raising
            return None if isinstance(found, dict) and found.get("id") == "not_found" else found
        except ClientAuthenticationError:
            raise CloudError("DigitalOcean refused the token (DIGITALOCEAN_TOKEN): create a new one with write "
                             "scope") from None
        except HttpResponseError as exc:
            try:
                message = exc.response.json().get("message") or exc.reason
            except ValueError:
                message = exc.reason
            if exc.status_code == 404:
                return None
            if exc.status_code == 422 and "limit" in message.lower():
                raise CloudError(f"DigitalOcean quota exceeded: {message}") from None
            raise CloudError(f"DigitalOcean refused the request ({exc.status_code}): {message}") from None
        except ServiceRequestError as exc:
            raise CloudError(f"cannot reach the DigitalOcean API: {exc.message}") from None

    @staticmethod
    def tag(name):
        return f"appliance-{name}"

    # the operator's SSH key
    def find_key(self, pubkey):
        found = self.call(self.client.ssh_keys.get, md5_fingerprint(pubkey))
        return found and found["ssh_key"]

    def create_key(self, pubkey):
        body = {"name": f"appliance {md5_fingerprint(pubkey)}", "public_key": pubkey}
        return self.call(self.client.ssh_keys.create, body)["ssh_key"]

    def delete_key(self, key):
        self.call(self.client.ssh_keys.delete, key["id"])

    def key_in_use(self, key):
        return False  # DigitalOcean does not say which droplets a key went to; purge removes the key we added

    # the cloud firewall, applied by tag
    def find_firewall(self, name):
        listed = self.call(self.client.firewalls.list, per_page=200)["firewalls"]
        return next((f for f in listed if f["name"] == self.tag(name)), None)

    def create_firewall(self, name):
        anywhere = ["0.0.0.0/0", "::/0"]
        ssh = [self.ssh_from] if self.ssh_from else anywhere
        inbound = [{"protocol": "tcp", "ports": str(port), "sources": {"addresses": sources}}
                   for port, sources in ((self.ssh_port, ssh), (self.http_port, anywhere), (self.https_port, anywhere))]
        outbound = [{"protocol": proto, "ports": "0", "destinations": {"addresses": anywhere}}
                    for proto in ("tcp", "udp", "icmp")]
        body = {"name": self.tag(name), "inbound_rules": inbound, "outbound_rules": outbound,
                "tags": [self.tag(name)]}
        return self.call(self.client.firewalls.create, body)["firewall"]

    def delete_firewall(self, firewall):
        self.call(self.client.firewalls.delete, firewall["id"])

    # the notebooks volume
    def volume_name(self, name):
        return f"appliance-{name}-notebooks"

    def find_volume(self, name):
        listed = self.call(self.client.volumes.list, name=self.volume_name(name), region=self.region)["volumes"]
        return listed[0] if listed else None

    def create_volume(self, name):
        body = {"name": self.volume_name(name), "size_gigabytes": self.volume_gb, "region": self.region,
                "description": f"notebooks of the appliance {name}", "tags": [self.tag(name)]}
        return self.call(self.client.volumes.create, body)["volume"]

    def volume_id(self, volume):
        return volume["id"]

    def volume_device(self, volume):
        return f"/dev/disk/by-id/scsi-0DO_Volume_{volume['name']}"

    def delete_volume(self, volume, say):
        self.call(self.client.volumes.delete, volume["id"])

    # the droplet
    def _server(self, droplet):
        address = next((n["ip_address"] for n in droplet["networks"]["v4"] if n["type"] == "public"), None)
        return Server("digitalocean", str(droplet["id"]), droplet["name"], droplet["region"]["slug"], address,
                      droplet["status"])

    def find_server(self, name):
        listed = self.call(self.client.droplets.list, tag_name=self.tag(name), per_page=200)["droplets"]
        return next((self._server(d) for d in listed if d["name"] == name), None)

    def create_server(self, name, pubkey, volume, user_data):
        body = {"name": name, "region": self.region, "size": self.size, "image": IMAGE,
                "ssh_keys": [md5_fingerprint(pubkey)], "user_data": user_data, "tags": [self.tag(name)],
                "volumes": [volume["id"]], "monitoring": False, "ipv6": False}
        return self._server(self.call(self.client.droplets.create, body)["droplet"])

    def get_server(self, server_id):
        found = self.call(self.client.droplets.get, int(server_id))
        if not found:
            raise CloudError(f"the droplet {server_id} disappeared while it was being created")
        return self._server(found["droplet"])

    def attach(self, server, volume, say):
        pass  # attached at creation (`volumes` of the droplet)

    def delete_server(self, server):
        self.call(self.client.droplets.destroy, int(server.id))

    def server_gone(self, server):
        found = self.call(self.client.droplets.get, int(server.id))
        return found is None, found["droplet"]["status"] if found else "gone"

    # volume snapshots
    def create_snapshot(self, name, volume, snap_name):
        self.call(self.client.volume_snapshots.create, volume["id"], {"name": snap_name, "tags": [self.tag(name)]})

    def snapshots(self, name):
        volume = self.find_volume(name)
        if not volume:
            return []
        listed = self.call(self.client.volume_snapshots.list, volume["id"], per_page=200)["snapshots"]
        return [{"id": s["id"], "name": s["name"], "created": s["created_at"], "size_gb": s.get("size_gigabytes")}
                for s in listed]

    def delete_snapshot(self, snap):
        self.call(self.client.volume_snapshots.delete_by_id, snap["id"])
