"""Session fixtures: a Docker engine that answers, the base image, the built images, tracked containers."""
import docker
import pytest

from appliance import engine, images



@pytest.fixture(scope="session")
def docker_client():
    """The engine; on a fresh machine Debian's docker.io is installed and dockerd started."""
    return engine.client(install=True)


@pytest.fixture(scope="session")
def base_image(docker_client):
    """debian:bookworm-slim, made the product's way when missing (pulled, else debootstrap)."""
    images.ensure_root_image(docker_client, images.ROOT_IMAGE, say=lambda msg: None)
    return docker_client.images.get(images.ROOT_IMAGE)


@pytest.fixture(scope="session")
def built_images(docker_client, base_image):
    """The tags of every image of the scipy chain, built once per session (cached layers)."""
    images.build("scipy", say=lambda msg: None)  # trusting the host's CAs, as provision.py does
    return {name: images.tag(name) for name in images.chain("scipy")}


@pytest.fixture
def containers(docker_client):
    """run(image, ...) starts a detached container; every one is removed afterwards, whatever happens."""
    started = []

    def run(image, *args, **kwargs):
        container = docker_client.containers.run(image, *args, detach=True, **kwargs)
        started.append(container)
        return container

    yield run
    for container in started:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
