import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fixtures_docker import *  # noqa: E402,F401,F403  (Docker engine, base image, tracked containers)
from fixtures_e2e import *  # noqa: E402,F401,F403  (the session's provisioned local droplet)


def pytest_collection_modifyitems(items):
    """The newcomer's first run goes first, on an engine nothing else has prepared (stable sort)."""
    items.sort(key=lambda item: item.path.name != "test_first_run.py")
