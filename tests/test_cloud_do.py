"""up/down/snapshot --cloud digitalocean through pydo against a fake of the v2 API that checks every request
against DigitalOcean's OpenAPI schema. The fake starts no server (that is tests/test_e2e_cloud.py)."""
import signal
import subprocess
from datetime import datetime, timedelta, timezone

import pytest

from appliance import cloud, config
from appliance.errors import CloudError
from appliance.state import State
from tests.fakes.do_fake import FakeDigitalOcean

STEPS = 5  # mutating calls of a create: key, firewall, volume, droplet (+1 spare: none happens)


@pytest.fixture
def fake(monkeypatch, tmp_path):
    fake = FakeDigitalOcean()
    monkeypatch.setenv("APPLIANCE_TEST_DIGITALOCEAN_ENDPOINT", fake.url)
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", fake.token)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", fake.ca_file)
    monkeypatch.setattr(cloud, "POLL", 0.01)
    # the fake's Ctrl+C is _thread.interrupt_main(), which does nothing while SIGINT is ignored (as it is
    # for a test run started in the background): Python's own handler, as in a terminal
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield fake
    signal.signal(signal.SIGINT, previous)
    fake.close()
    assert fake.errors == []  # no request the real API would have refused


@pytest.fixture
def cfg(tmp_path):
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return config.load({"cloud": "digitalocean", "name": "nb1", "ssh_key": str(key),
                        "state_dir": str(tmp_path / "state"), "ssh_from": "203.0.113.7/32"}, env={})


def quiet(msg):
    pass


def test_create_pins_host_key_and_second_up_creates_nothing(fake, cfg):
    server = cloud.up(cfg, say=quiet, provision=False)
    assert server.status == "active" and server.address == "127.0.0.1"
    assert fake.resources() == {"keys": 1, "firewalls": 1, "volumes": 1, "droplets": 1, "snapshots": 0}
    assert fake.mutations() == ["POST /v2/account/keys", "POST /v2/firewalls", "POST /v2/volumes", "POST /v2/droplets"]
    droplet = next(iter(fake.droplets.values()))
    record = State(cfg.target_dir.parent / "digitalocean-nb1").cloud_server()
    assert record["id"] == str(droplet["id"]) and record["ssh_user"] == "root"
    host_key = record["host_key"]
    assert "DIGITALOCEAN" not in str(record) and fake.token not in str(record)
    known = State(cfg.target_dir.parent / "127.0.0.1").read("known_hosts").decode()
    assert known == f"127.0.0.1 {host_key}\n"  # pinned before any contact
    data = droplet["user_data"]
    assert data.startswith("#cloud-config") and host_key in data and "BEGIN OPENSSH PRIVATE KEY" in data
    assert "/dev/disk/by-id/scsi-0DO_Volume_appliance-nb1-notebooks" in data and "/home/ds/notebooks" in data
    fw = next(iter(fake.firewalls.values()))
    assert fw["inbound_rules"][0] == {"protocol": "tcp", "ports": "22", "sources": {"addresses": ["203.0.113.7/32"]}}
    assert fw["tags"] == ["appliance-nb1"] and droplet["tags"] == ["appliance-nb1"]
    before = len(fake.mutations())
    again = cloud.up(cfg, say=quiet, provision=False)
    assert again.id == server.id and len(fake.mutations()) == before


def test_key_firewall_and_volume_are_reused(fake, cfg):
    cloud.up(cfg, say=quiet, provision=False)
    cloud.down(cfg, say=quiet)  # keeps volume, firewall, key
    assert fake.resources() == {"keys": 1, "firewalls": 1, "volumes": 1, "droplets": 0, "snapshots": 0}
    cloud.up(cfg, say=quiet, provision=False)
    assert fake.mutations()[-1] == "POST /v2/droplets"
    assert fake.resources()["volumes"] == 1 and fake.resources()["keys"] == 1


@pytest.mark.parametrize("step", range(1, STEPS))
def test_interrupted_create_leaves_nothing(fake, cfg, step):
    fake.interrupt_at = step  # Ctrl+C right after the step's call succeeded at the provider
    with pytest.raises(KeyboardInterrupt):
        cloud.up(cfg, say=quiet, provision=False)
    assert fake.resources() == {"keys": 0, "firewalls": 0, "volumes": 0, "droplets": 0, "snapshots": 0}


def test_interrupted_create_keeps_what_was_there(fake, cfg):
    cloud.up(cfg, say=quiet, provision=False)
    cloud.down(cfg, say=quiet)
    fake.interrupt_at = 1  # the droplet is the only thing created now
    with pytest.raises(KeyboardInterrupt):
        cloud.up(cfg, say=quiet, provision=False)
    assert fake.resources() == {"keys": 1, "firewalls": 1, "volumes": 1, "droplets": 0, "snapshots": 0}


def test_failed_create_cleans_up(fake, cfg):
    fake.droplet_limit = 0
    with pytest.raises(CloudError, match="^DigitalOcean quota exceeded: creating this/these droplet"):
        cloud.up(cfg, say=quiet, provision=False)
    assert fake.resources() == {"keys": 0, "firewalls": 0, "volumes": 0, "droplets": 0, "snapshots": 0}


def test_down_purge_removes_everything(fake, cfg):
    cloud.up(cfg, say=quiet, provision=False)
    prov = cloud.provider(cfg)
    cloud.snapshot(prov, cfg.name, keep=3, say=quiet)
    removed = cloud.down(cfg, purge=True, say=quiet)
    assert fake.resources() == {"keys": 0, "firewalls": 0, "volumes": 0, "droplets": 0, "snapshots": 0}
    assert len(removed) == 5
    assert State(cfg.target_dir.parent / "digitalocean-nb1").cloud_server() is None


def test_snapshot_retention(fake, cfg):
    cloud.up(cfg, say=quiet, provision=False)
    prov = cloud.provider(cfg)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    names = [cloud.snapshot(prov, cfg.name, keep=2, say=quiet, now=start + timedelta(days=d))[0] for d in range(4)]
    kept = sorted(s["name"] for s in prov.snapshots(cfg.name))
    assert kept == names[2:] == ["appliance-nb1-20260103-000000", "appliance-nb1-20260104-000000"]


@pytest.mark.parametrize("change, message", [
    ({"size": "s-99vcpu-1tb"}, "^DigitalOcean refused the request \\(422\\): You specified an invalid size"),
    ({"region": "xyz9"}, "^DigitalOcean refused the request \\(400\\): parameter region: 'xyz9' is not one of"),
])
def test_unknown_size_or_region(fake, cfg, change, message):
    import dataclasses
    with pytest.raises(CloudError, match=message):
        cloud.up(dataclasses.replace(cfg, **change), say=quiet, provision=False)
    assert fake.resources()["droplets"] == 0 and fake.resources()["volumes"] == 0
    fake.errors.clear()  # the unknown region was refused by the schema, as the API does


def test_bad_token(fake, cfg, monkeypatch):
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", "wrong")
    with pytest.raises(CloudError, match="^DigitalOcean refused the token"):
        cloud.up(cfg, say=quiet, provision=False)


def test_no_token(cfg, monkeypatch, tmp_path):
    monkeypatch.delenv("DIGITALOCEAN_TOKEN", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "none"))
    with pytest.raises(CloudError, match="^no DigitalOcean token"):
        cloud.provider(cfg)


def test_fake_refuses_a_malformed_request(fake, cfg):
    prov = cloud.provider(cfg)
    with pytest.raises(CloudError, match="400"):
        prov.call(prov.client.droplets.create, {"name": "x", "region": "fra1", "size": "s-2vcpu-4gb", "image": 5.5})
    assert fake.errors and "POST /v2/droplets: body" in fake.errors[0]
    fake.errors.clear()


def test_snapshots_in_the_same_second_get_different_names(fake, cfg):
    cloud.up(cfg, say=quiet, provision=False)
    prov = cloud.provider(cfg)
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    made = [cloud.snapshot(prov, cfg.name, keep=3, say=quiet, now=now)[0] for _ in range(3)]
    assert made == ["appliance-nb1-20260101-000000", "appliance-nb1-20260101-000000-1",
                    "appliance-nb1-20260101-000000-2"]
