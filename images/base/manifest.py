"""Print the image's versions manifest: Python, every installed package, the base image."""
import importlib.metadata
import json
import platform
import sys

packages = {d.metadata["Name"].lower(): d.version for d in importlib.metadata.distributions()}
print(json.dumps({"python": platform.python_version(), "base_image": sys.argv[1] if len(sys.argv) > 1 else "",
                  "packages": dict(sorted(packages.items()))}, indent=1))
