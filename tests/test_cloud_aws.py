"""up/down/snapshot --cloud aws through boto3 against moto in server mode on 127.0.0.1 (nothing starts)."""
import json
import socket
import subprocess
import sys
import time

import pytest

from appliance import cloud, config
from appliance.cloud import aws
from appliance.errors import CloudError

AMIS = [{"ami_id": f"ami-{n:017x}", "name": f"debian-12-amd64-2026010{n}-2000", "owner_id": aws.DEBIAN_OWNER,
         "architecture": "x86_64", "state": "available", "virtualization_type": "hvm", "hypervisor": "xen",
         "root_device_type": "ebs", "root_device_name": "/dev/xvda", "public": True,
         "creation_date": f"2026-01-0{n}T20:00:00.000Z", "description": "Debian 12"} for n in (1, 3, 2)]


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    amis = tmp_path_factory.mktemp("moto") / "amis.json"
    amis.write_text(json.dumps(AMIS))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env={"MOTO_AMIS_PATH": str(amis), "PATH": "/usr/bin:/bin",
                                 "MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION": "true"},  # as EC2 does
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait()


@pytest.fixture
def cfg(moto, monkeypatch, tmp_path):
    monkeypatch.setenv("APPLIANCE_TEST_AWS_ENDPOINT", moto)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setattr(cloud, "POLL", 0.05)
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    name = tmp_path.name[-30:].lower().replace("_", "-").strip("-")
    return config.load({"cloud": "aws", "name": name, "ssh_key": str(key), "state_dir": str(tmp_path / "state")},
                       env={})


def quiet(msg):
    pass


def test_create_find_down_purge(cfg):
    server = cloud.up(cfg, say=quiet, provision=False)
    prov = cloud.provider(cfg)
    inst = prov.ec2.describe_instances(InstanceIds=[server.id])["Reservations"][0]["Instances"][0]
    assert inst["ImageId"] == AMIS[1]["ami_id"]  # the newest Debian 12 image
    assert inst["InstanceType"] == "t3.medium"
    volume = prov.find_volume(cfg.name)
    assert volume["Attachments"] and volume["Attachments"][0]["InstanceId"] == server.id
    group = prov.find_firewall(cfg.name)
    assert sorted(p["FromPort"] for p in group["IpPermissions"]) == [22, 80, 443]
    assert cloud.up(cfg, say=quiet, provision=False).id == server.id  # found, nothing new
    assert len(prov._instances([{"Name": "tag:appliance", "Values": [cfg.name]}])) == 1
    cloud.snapshot(prov, cfg.name, keep=1, say=quiet)
    cloud.down(cfg, say=quiet)
    assert prov.find_server(cfg.name) is None and prov.find_volume(cfg.name)
    cloud.down(cfg, purge=True, say=quiet)
    assert prov.find_volume(cfg.name) is None and prov.find_firewall(cfg.name) is None
    assert prov.snapshots(cfg.name) == []


@pytest.mark.parametrize("step", range(1, 5))
def test_interrupted_create_leaves_nothing(cfg, step):
    prov = cloud.provider(cfg)
    calls = []

    def interrupt(**kwargs):
        name = kwargs["event_name"].split(".")[-1]
        if name.startswith(("Create", "Import", "RunInstances", "AttachVolume", "Authorize")):
            calls.append(name)
            if len(calls) == step:
                raise KeyboardInterrupt
    prov.ec2.meta.events.register("after-call.ec2", interrupt)
    monkey_provider = lambda c: prov  # noqa: E731  the same client, with the hook
    import appliance.cloud as c
    orig, c.provider = c.provider, monkey_provider
    try:
        with pytest.raises(KeyboardInterrupt):
            cloud.up(cfg, say=quiet, provision=False)
    finally:
        c.provider = orig
    prov.ec2.meta.events.unregister("after-call.ec2", interrupt)
    assert prov.find_server(cfg.name) is None and prov.find_volume(cfg.name) is None
    assert prov.find_firewall(cfg.name) is None


def test_no_credentials(cfg, monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(CloudError, match="^no AWS credentials"):
        cloud.up(cfg, say=quiet, provision=False)


def with_hook(cfg, event, handler):
    """cloud.up(cfg) with `handler` registered on the provider's EC2 client for `event`."""
    prov = cloud.provider(cfg)
    prov.ec2.meta.events.register(event, handler)
    import appliance.cloud as c
    orig, c.provider = c.provider, lambda _: prov
    try:
        return cloud.up(cfg, say=quiet, provision=False)
    finally:
        c.provider = orig


def nothing_left(cfg):
    prov = cloud.provider(cfg)
    return (prov.find_server(cfg.name), prov.find_volume(cfg.name), prov.find_firewall(cfg.name)) == (None,) * 3


def test_quota_exceeded_is_one_line_and_leaves_nothing(cfg):
    """EC2's answer when the account's vCPU limit is reached (moto does not keep limits: the answer is given
    to botocore before the call goes out, and parsed the way botocore parses EC2's errors)."""
    from botocore.awsrequest import AWSResponse

    def refuse(**kwargs):
        return AWSResponse("https://ec2.eu-central-1.amazonaws.com/", 400, {}, None), {
            "Error": {"Code": "VcpuLimitExceeded", "Message": "You have requested more vCPU capacity than your "
                      "current vCPU limit of 0 allows for the instance bucket that the specified instance type "
                      "belongs to."}, "ResponseMetadata": {"HTTPStatusCode": 400}}
    with pytest.raises(CloudError, match=r"^AWS quota exceeded \(VcpuLimitExceeded\): You have requested"):
        with_hook(cfg, "before-call.ec2.RunInstances", refuse)
    assert nothing_left(cfg)


def test_unknown_instance_type(cfg):
    import dataclasses
    with pytest.raises(CloudError, match=r"^AWS refused run_instances \(Invalid[\w.]+\): .*'t3\.colossal'"):
        cloud.up(dataclasses.replace(cfg, instance_type="t3.colossal"), say=quiet, provision=False)
    assert nothing_left(cfg)


def test_unknown_region(cfg):
    import dataclasses
    with pytest.raises(CloudError, match=r"^unknown AWS region 'eu-middle-9'"):
        cloud.provider(dataclasses.replace(cfg, region="eu-middle-9"))
