"""Where the image is built (appliance/delivery.py): the source key that says two images hold the same
software, the label the jupyter role waits for, and the relay that gives the Docker SDK the server's engine.
The whole way over SSH to a new server behind a shaped link: tests/test_e2e_build_on_server.py."""
import shutil

import docker
import pytest
import yaml

from appliance import delivery, images
from helpers import ROOT


@pytest.fixture
def sources(tmp_path, monkeypatch):
    """A copy of images/ the key is computed from."""
    shutil.copytree(images.IMAGES, tmp_path / "images")
    monkeypatch.setattr(images, "IMAGES", tmp_path / "images")
    return tmp_path / "images"


def test_the_source_key_follows_everything_the_image_is_built_from(sources, tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("one CA\n")
    key = images.source_key("scipy", "sha256:root", str(bundle))
    assert key == images.source_key("scipy", "sha256:root", str(bundle))  # nothing else goes in
    assert images.source_key("scipy", "sha256:other", str(bundle)) != key
    assert images.source_key("scipy", "sha256:root", str(bundle), ("tabulate==0.9.0",)) != key
    assert images.source_key("scipy", "sha256:root", None) != key
    assert images.source_key("base", "sha256:root", str(bundle)) != key
    bundle.write_text("another CA\n")
    assert images.source_key("scipy", "sha256:root", str(bundle)) != key
    bundle.write_text("one CA\n")
    for changed in ("base/requirements.lock", "scipy/Dockerfile", "base/start.py"):
        original = (sources / changed).read_bytes()
        (sources / changed).write_bytes(original + b"\n")
        assert images.source_key("scipy", "sha256:root", str(bundle)) != key, changed
        (sources / changed).write_bytes(original)
    (sources / "scipy" / "new-file").write_text("x")
    assert images.source_key("scipy", "sha256:root", str(bundle)) != key


def test_the_jupyter_role_waits_for_the_label_the_build_writes():
    tasks = yaml.safe_load((ROOT / "ansible" / "roles" / "jupyter" / "tasks" / "main.yml").read_text())
    wait = next(t for t in tasks if t["name"].startswith("Wait for the image built from the wanted sources"))
    assert f'"{images.SOURCE}"' in " ".join(wait["ansible.builtin.command"]["argv"])
    names = [t["name"] for t in tasks]
    assert names.index(wait["name"]) == names.index("Run the notebook container") - 1


class LocalTarget:
    """A target whose commands run on this machine: the relay's own code, without SSH in the way."""
    user = "root"

    def argv(self, command):
        return ["sh", "-c", command]

    def sudo(self, command):
        return command


def test_the_relay_carries_the_docker_api_builds_included(docker_client, base_image, tmp_path):
    with delivery.server_engine(LocalTarget(), tmp_path) as client:
        assert (tmp_path / "server-docker.sock").stat().st_mode & 0o777 == 0o600
        assert client.version()["ApiVersion"] == docker_client.version()["ApiVersion"]
        context = tmp_path / "context"
        context.mkdir()
        (context / "Dockerfile").write_text(f"FROM {images.ROOT_IMAGE}\nRUN echo relayed > /relayed\n")
        shown = []
        progress = images.Progress(out=_Sink(shown))
        progress.start("relayed")
        image_id = images._stream(client.api, progress, path=str(context), tag="appliance-test/relayed:latest",
                                  nocache=True)
        assert image_id == docker_client.images.get("appliance-test/relayed:latest").id
        assert any("RUN echo relayed" in line for line in shown)
        out = client.containers.run("appliance-test/relayed:latest", ["cat", "/relayed"], remove=True)
        assert out == b"relayed\n"
    assert not (tmp_path / "server-docker.sock").exists()
    with pytest.raises((docker.errors.DockerException, OSError)):
        docker.DockerClient(base_url=f"unix://{tmp_path}/server-docker.sock", timeout=5).version()
    docker_client.images.remove("appliance-test/relayed:latest")


class _Sink:
    def __init__(self, lines):
        self.lines = lines

    def isatty(self):
        return False

    def write(self, text):
        self.lines.extend(text.splitlines())

    def flush(self):
        pass
