"""A new server behind a slow uplink: `up` measures the upload, lets the server build the image itself
(appliance/delivery.py) while it sets up the rest, and a second `up` finds nothing to do.

The server is a droplet of its own (worker droplet index 9, empty engine) reached as `up --host <its bridge
address>`; what goes to its SSH port is shaped to 20 Mbit/s (tc on the host end of its veth), its own
downloads are not, as with a cloud server and a home uplink."""
import json
import os
import subprocess

import pytest

from appliance import config, droplet, engine, images, layout
from bench.delivery import host_interface
from bench.remote_build import shape_ssh
from helpers import ARTIFACTS, PASSWORD, provision

pytestmark = pytest.mark.e2e
INDEX = 9


def in_server(*cmd):
    r = subprocess.run(["docker", "exec", droplet.Spec(INDEX).name, *cmd], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.fixture
def new_server(docker_client, base_image, tmp_path):
    cfg = config.Config(host="127.0.0.1", state_dir=str(tmp_path))
    droplet.remove_worker(INDEX, say=lambda m: None)
    server = droplet.ensure(cfg, say=lambda m: None, index=INDEX)
    interface = host_interface(droplet.Spec(INDEX).name)
    try:
        yield server, interface
    finally:
        shape_ssh(interface, 0)
        droplet.remove_worker(INDEX, say=lambda m: None)


def test_slow_uplink_the_server_builds_the_image(new_server, tmp_path):
    server, interface = new_server
    env = {**os.environ, "APPLIANCE_STATE_DIR": str(tmp_path), "APPLIANCE_PASSWORD": PASSWORD}
    flags = ("--host", server["address"], "--ssh-key", server["key"])
    shape_ssh(interface, 20)
    try:
        r, cold = provision("up", *flags, env=env)
    finally:
        shape_ssh(interface, 0)
    assert r.returncode == 0, r.stdout[-4000:]
    assert "Mbit/s: the server builds the image" in r.stdout
    assert "Sending the root image" in r.stdout and "Image built on the server in" in r.stdout
    assert "Sending image" not in r.stdout  # the notebook image itself never crossed the link
    # the image there is built from the sources here, and the notebook container runs it, healthy
    client = engine.client()
    key = images.source_key("scipy", client.images.get(images.ROOT_IMAGE).id, images.trusted_cas())
    label = in_server("docker", "image", "inspect", "--format",
                      '{{index .Config.Labels "org.appliance.source"}}', images.tag("scipy"))
    assert label == key
    container = json.loads(in_server("docker", "inspect", layout.CONTAINER))[0]
    assert container["Image"] == in_server("docker", "image", "inspect", "--format", "{{.Id}}", images.tag("scipy"))
    assert container["State"]["Health"]["Status"] == "healthy"
    assert not in_server("sh", "-c", "ls -d /var/tmp/appliance-root.* 2>/dev/null || true")  # the upload is gone
    # nothing changed: no build, no transfer, no Ansible
    r, second = provision("up", *flags, env=env)
    assert r.returncode == 0, r.stdout[-4000:]
    assert "Ansible is not needed" in r.stdout and "changed=0" in r.stdout
    assert "Building" not in r.stdout and "Upload to the server" not in r.stdout
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "e2e-build-on-server.json").write_text(json.dumps(
        {"cold_up_20mbit_s": round(cold, 1), "second_up_s": round(second, 1)}, indent=2))
