import os
import sys
from pathlib import Path

import pytest

# boto3's credential chain would ask the instance metadata service (169.254.169.254): never from the tests
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
pytest_plugins = ["fixtures_docker",  # Docker engine, base image, built images, tracked containers
                  "fixtures_e2e"]  # the session's provisioned local droplet


def pytest_collection_modifyitems(items):
    """The newcomer's first run goes first, on an engine nothing else has prepared (stable sort)."""
    items.sort(key=lambda item: item.path.name != "test_first_run.py")


@pytest.fixture(autouse=True, scope="session")
def private_config_home(tmp_path_factory):
    """provision.py keeps the CA passphrases under $XDG_CONFIG_HOME: the tests' go to a temporary one."""
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("config"))
