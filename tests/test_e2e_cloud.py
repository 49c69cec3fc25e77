"""`up --cloud` end to end: through pydo against the DigitalOcean fake and boto3 against moto, each "server" a
local droplet that runs the user data through real cloud-init (tests/fakes/local_cloud.py), then provisioned,
found again, snapshotted, destroyed and re-created over its notebooks volume, and purged."""
import json
import os
import subprocess
import time

import pytest
import requests

from appliance.state import State
from fakes.do_fake import FakeDigitalOcean
from fakes.local_cloud import LocalCloud
from helpers import ARTIFACTS, PASSWORD, provision
from jupyter_api import session

pytestmark = pytest.mark.e2e
NOTEBOOK = {"cells": [{"cell_type": "code", "source": "print('kept on the volume')", "metadata": {},
                       "outputs": [], "execution_count": None}],
            "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
TIMINGS = {}


@pytest.fixture(scope="module", autouse=True)
def write_timings():
    yield
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "e2e-cloud-timings.json").write_text(json.dumps(TIMINGS, indent=2))


def local_cloud(docker_client, tmp_path, provider):
    servers = LocalCloud(docker_client, tmp_path, provider)
    servers.build_image()
    return servers


def base_env(tmp_path, servers):
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLIANCE_", "AWS_", "DIGITALOCEAN_"))}
    env.update({"APPLIANCE_STATE_DIR": str(tmp_path / "state"), "APPLIANCE_PASSWORD": PASSWORD,
                "APPLIANCE_TEST_CLOUD_SSH_PORT": str(servers.ports[22]), "AWS_EC2_METADATA_DISABLED": "true"})
    return env, ["--ssh-key", str(key), "--name", "nb1"]


def check_ok(r):
    assert r.returncode == 0, r.stdout[-4000:]
    return r.stdout


def up(cloud, env, flags, timing):
    r, took = provision("up", "--cloud", cloud, *flags, env=env)
    TIMINGS[f"{cloud}_{timing}_s"] = round(took, 1)
    return check_ok(r)


def web(tmp_path, servers):
    url = f"https://127.0.0.1:{servers.ports[443]}"
    return url, session(str(tmp_path / "state" / "127.0.0.1" / "ca.crt"), "ds", PASSWORD)


def in_server(servers, server_id, *cmd):
    r = servers.container(server_id).exec_run(list(cmd))
    assert r.exit_code == 0, r.output.decode()
    return r.output.decode()


def check_server(servers, server_id, tmp_path, cloud):
    """The host key pinned here is the server's (and not the one the user data carried), the volume is the
    notebooks directory, and the appliance answers with its login."""
    record = State(tmp_path / "state" / f"{cloud}-nb1").cloud_server()
    known = (tmp_path / "state" / "127.0.0.1" / "known_hosts").read_text().split()
    served = in_server(servers, server_id, "cat", "/etc/ssh/ssh_host_ed25519_key.pub").split()[:2]
    assert known[1:3] == served == record["host_key"].split()
    seeded = in_server(servers, server_id, "cat", "/var/lib/cloud/seed/nocloud/user-data")
    assert served[1] not in seeded  # rotated after the first, pinned login
    mount = in_server(servers, server_id, "findmnt", "-n", "-o", "SOURCE,FSTYPE", "/home/ds/notebooks").split()
    assert mount[1] == "ext4" and mount[0].startswith("/dev/disk/by-id/"), mount
    assert "status: done" in in_server(servers, server_id, "cloud-init", "status")
    assert "Valid cloud-config" in in_server(servers, server_id, "cloud-init", "schema", "--system")
    url, s = web(tmp_path, servers)
    assert requests.get(f"{url}/api/status", verify=s.verify).status_code == 401
    assert s.get(f"{url}/api/status").status_code == 200


def test_digitalocean_create_find_snapshot_recreate_purge(docker_client, base_image, tmp_path):
    servers = local_cloud(docker_client, tmp_path, "digitalocean")
    fake = FakeDigitalOcean(servers=servers)
    env, flags = base_env(tmp_path, servers)
    env.update({"DIGITALOCEAN_TOKEN": fake.token, "APPLIANCE_TEST_DIGITALOCEAN_ENDPOINT": fake.url,
                "REQUESTS_CA_BUNDLE": fake.ca_file})
    try:
        out = up("digitalocean", env, flags, "cold_up")
        assert fake.mutations() == ["POST /v2/account/keys", "POST /v2/firewalls", "POST /v2/volumes",
                                    "POST /v2/droplets"]
        assert "Replaced the server's SSH host key" in out
        (droplet_id,) = fake.droplets
        check_server(servers, droplet_id, tmp_path, "digitalocean")
        url, s = web(tmp_path, servers)
        saved = s.put(f"{url}/api/contents/keep.ipynb", json={"type": "notebook", "content": NOTEBOOK})
        assert saved.status_code == 201, saved.text

        calls = len(fake.calls)
        out = up("digitalocean", env, flags, "second_up")
        assert "Found the DigitalOcean server nb1" in out and "changed=0" in out
        assert fake.mutations()[-1] == "POST /v2/droplets" and len(fake.mutations()) == 4
        assert all(c.startswith("GET ") for c in fake.calls[calls:])

        for _ in range(2):
            check_ok(provision("snapshot", "--cloud", "digitalocean", *flags, "--keep", "1", env=env)[0])
        listed = check_ok(provision("snapshot", "list", "--cloud", "digitalocean", *flags, env=env)[0])
        assert listed.count("appliance-nb1-") == 1 and fake.resources()["snapshots"] == 1

        out = check_ok(provision("down", "--cloud", "digitalocean", *flags, env=env)[0])
        assert fake.resources() == {"keys": 1, "firewalls": 1, "volumes": 1, "droplets": 0, "snapshots": 1}
        assert servers.servers == {} and len(servers.volumes) == 1

        up("digitalocean", env, flags, "recreate_up")
        (again,) = fake.droplets
        assert again != droplet_id and servers.log == ["volume", "boot", "destroy", "boot"]
        check_server(servers, again, tmp_path, "digitalocean")
        kept = s.get(f"{url}/api/contents/keep.ipynb")
        assert kept.status_code == 200 and kept.json()["content"]["cells"][0]["source"] == NOTEBOOK["cells"][0]["source"]

        r, _ = provision("down", "--purge", "--cloud", "digitalocean", *flags, env=env)
        assert r.returncode != 0 and "add --yes" in r.stdout  # never without asking
        check_ok(provision("down", "--purge", "--yes", "--cloud", "digitalocean", *flags, env=env)[0])
        assert fake.resources() == {"keys": 0, "firewalls": 0, "volumes": 0, "droplets": 0, "snapshots": 0}
        assert servers.servers == {} and servers.volumes == {}
        TIMINGS["digitalocean_api_calls"] = fake.calls
    finally:
        servers.close()
        fake.close()
    assert fake.errors == []


def test_ctrl_c_while_the_droplet_boots_leaves_nothing(docker_client, base_image, tmp_path):
    """Ctrl+C in `up --cloud` once the droplet exists (booted, billing): it is destroyed with everything else
    this run created, and the volume's block device is gone too."""
    import signal
    import sys
    from helpers import ROOT
    servers = local_cloud(docker_client, tmp_path, "digitalocean")
    fake = FakeDigitalOcean(servers=servers, active_after=10 ** 6)  # stays "new": up is waiting when we stop it
    env, flags = base_env(tmp_path, servers)
    env.update({"DIGITALOCEAN_TOKEN": fake.token, "APPLIANCE_TEST_DIGITALOCEAN_ENDPOINT": fake.url,
                "REQUESTS_CA_BUNDLE": fake.ca_file})
    try:
        proc = subprocess.Popen([sys.executable, str(ROOT / "provision.py"), "up", "--cloud", "digitalocean", *flags],
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 120
        while not (servers.servers and fake.calls.count("GET /v2/droplets/" + str(next(iter(fake.droplets), ""))) >= 2):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        booted = servers.container(next(iter(servers.servers))).status
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
        print(out)
        assert proc.returncode == 130 and "Creation stopped: removing what this run created" in out
        assert booted in ("created", "running")
        assert fake.resources() == {"keys": 0, "firewalls": 0, "volumes": 0, "droplets": 0, "snapshots": 0}
        assert servers.servers == {} and servers.volumes == {} and servers.log[-2:] == ["destroy", "delete volume"]
        assert not [c for c in docker_client.containers.list(all=True) if c.name.startswith("appliance-cloud-")]
    finally:
        servers.close()
        fake.close()
    assert fake.errors == []


@pytest.fixture
def moto_in_process(monkeypatch, tmp_path):
    """moto's EC2 in this process, so that its run_instances boots a local droplet: the instance's address
    becomes 127.0.0.1 and its EBS volume shows up where a Nitro instance shows it."""
    from moto.ec2.models.elastic_block_store import EBSBackend
    from moto.ec2.models.instances import InstanceBackend
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    from moto.core.responses import BaseResponse
    from moto.ec2.models import amis

    from test_cloud_aws import AMIS
    monkeypatch.setattr(amis, "AMIS", AMIS)  # what MOTO_AMIS_PATH gives when set before moto is imported
    monkeypatch.setenv("MOTO_AMIS_PATH", "-")
    monkeypatch.setenv("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "true")
    holder = {"calls": []}

    def tags(backend, resource_id):
        return {t["key"]: t["value"] for t in backend.describe_tags(filters={"resource-id": [resource_id]})}

    def run_instances(backend, *args, **kwargs):
        reservation = real_run(backend, *args, **kwargs)
        for instance in reservation.instances:
            instance.nics[0].public_ip = "127.0.0.1"
            name = tags(backend, instance.id)["appliance"]
            volumes = [v for v in backend.volumes.values() if tags(backend, v.id).get("appliance") == name]
            key = backend.key_pairs[instance.key_name].material_public.decode()
            holder["servers"].boot(instance.id, name, instance.user_data.decode(), [key], {
                v.id: "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_" + v.id.replace("-", "") for v in volumes})
        return reservation

    def terminate_instances(backend, instance_ids):
        for instance_id in instance_ids:
            holder["servers"].destroy(instance_id)
        return real_terminate(backend, instance_ids)

    def delete_volume(backend, volume_id):
        found = real_delete_volume(backend, volume_id)
        holder["servers"].delete_volume(volume_id)
        return found

    def call_action(response):
        if "appliance-test-check" not in response.headers.get("User-Agent", ""):  # not the test's own look
            holder["calls"].append(response._get_action())
        return real_call_action(response)

    real_call_action = BaseResponse.call_action
    monkeypatch.setattr(BaseResponse, "call_action", call_action)
    real_run, real_terminate = InstanceBackend.run_instances, InstanceBackend.terminate_instances
    real_delete_volume = EBSBackend.delete_volume
    monkeypatch.setattr(InstanceBackend, "run_instances", run_instances)
    monkeypatch.setattr(InstanceBackend, "terminate_instances", terminate_instances)
    monkeypatch.setattr(EBSBackend, "delete_volume", delete_volume)
    from fakes.local_cloud import _free_port
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}", holder
    server.stop()


def test_aws_create_find_snapshot_purge(docker_client, base_image, tmp_path, moto_in_process):
    endpoint, holder = moto_in_process
    servers = holder["servers"] = local_cloud(docker_client, tmp_path, "aws")
    env, flags = base_env(tmp_path, servers)
    env.update({"APPLIANCE_TEST_AWS_ENDPOINT": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing"})
    import boto3.session
    from botocore.config import Config
    ec2 = boto3.session.Session().client("ec2", region_name="eu-central-1", endpoint_url=endpoint,
                                         aws_access_key_id="testing", aws_secret_access_key="testing",
                                         config=Config(user_agent_extra="appliance-test-check"))
    try:
        out = up("aws", env, flags, "cold_up")
        assert "Replaced the server's SSH host key" in out
        (instance_id,) = servers.servers
        check_server(servers, instance_id, tmp_path, "aws")
        assert in_server(servers, instance_id, "id", "-un", "admin").strip() == "admin"  # the AMI's login
        instance = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
        assert instance["MetadataOptions"]["HttpTokens"] == "required"
        group = ec2.describe_security_groups(GroupIds=[instance["SecurityGroups"][0]["GroupId"]])["SecurityGroups"][0]
        assert sorted(p["FromPort"] for p in group["IpPermissions"]) == [22, 80, 443]

        out = up("aws", env, flags, "second_up")
        assert "Found the AWS server nb1" in out and "changed=0" in out and servers.log == ["volume", "boot"]

        check_ok(provision("snapshot", "--cloud", "aws", *flags, env=env)[0])
        mine = [{"Name": "tag:appliance", "Values": ["nb1"]}]  # moto's AMIs come with snapshots of their own
        assert len(ec2.describe_snapshots(OwnerIds=["self"], Filters=mine)["Snapshots"]) == 1

        check_ok(provision("down", "--cloud", "aws", *flags, env=env)[0])
        state = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]
        assert state == "terminated" and servers.servers == {}
        assert len(ec2.describe_volumes()["Volumes"]) == 1 and len(ec2.describe_key_pairs()["KeyPairs"]) == 1

        check_ok(provision("down", "--purge", "--yes", "--cloud", "aws", *flags, env=env)[0])
        left = (ec2.describe_volumes()["Volumes"], ec2.describe_snapshots(OwnerIds=["self"], Filters=mine)["Snapshots"],
                ec2.describe_key_pairs()["KeyPairs"],
                [g for g in ec2.describe_security_groups()["SecurityGroups"] if g["GroupName"] != "default"])
        assert left == ([], [], [], []) and servers.volumes == {}
        TIMINGS["aws_api_calls"] = holder["calls"]
    finally:
        servers.close()
