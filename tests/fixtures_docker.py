"""Session fixtures: a Docker engine that answers, the base image, the built images, tracked containers."""
import docker
import pytest

from appliance import engine, images

HOST_CA = "/etc/ssl/certs/ca-certificates.crt"


@pytest.fixture(scope="session")
def docker_client():
    """The engine; on a fresh machine Debian's docker.io is installed and dockerd started."""
    return engine.client(install=True)


@pytest.fixture(scope="session")
def base_image(docker_client):
    """debian:bookworm-slim: pulled, or made with debootstrap when no registry answers (cached)."""
    try:
        return docker_client.images.get(images.ROOT_IMAGE)
    except docker.errors.ImageNotFound:
        images.ensure_root_image(docker_client)
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
