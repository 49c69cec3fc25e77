"""Session fixtures: a Docker engine that answers, the base image, the built images, tracked containers."""
import subprocess
from pathlib import Path

import docker
import pytest

from appliance import engine, images

CACHE = Path("/var/cache/appliance-tests")
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"


@pytest.fixture(scope="session")
def docker_client():
    """The engine; on a fresh machine Debian's docker.io is installed and dockerd started."""
    return engine.client(install=True)


@pytest.fixture(scope="session")
def base_image(docker_client):
    """debian:bookworm-slim, made with debootstrap when no registry can give it (cached between runs)."""
    try:
        return docker_client.images.get(images.ROOT_IMAGE)
    except docker.errors.ImageNotFound:
        pass
    tarball = CACHE / "bookworm-minbase.tar"
    if not tarball.exists():
        root = CACHE / "bookworm-root"
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["rm", "-rf", str(root)], check=True)
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(root), "http://deb.debian.org/debian"],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["tar", "-C", str(root), "-cf", f"{tarball}.part", "."], check=True)
        Path(f"{tarball}.part").rename(tarball)
        subprocess.run(["rm", "-rf", str(root)], check=True)
    repository, tag = images.ROOT_IMAGE.split(":")
    docker_client.api.import_image_from_file(str(tarball), repository=repository, tag=tag, changes=['CMD ["bash"]'])
    return docker_client.images.get(images.ROOT_IMAGE)


@pytest.fixture(scope="session")
def scipy_image(docker_client, base_image):
    return images.build("scipy", ca_bundle=HOST_CA, say=lambda m: None)


@pytest.fixture
def containers(docker_client):
    """Start containers with run(...); every one is removed afterwards, whatever happens."""
    started = []

    def run(image, *args, **kwargs):
        container = docker_client.containers.run(image, *args, detach=True, **kwargs)
        started.append(container)
        return container

    yield run
    for container in started:
        container.remove(force=True)
