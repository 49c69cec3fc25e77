"""Print the image's versions manifest: Python, every installed package, the parent and root images.

    python manifest.py PARENT_IMAGE ROOT_IMAGE > /opt/appliance/manifest.json
"""
import importlib.metadata
import json
import platform
import re
import sys

parent, root = (sys.argv[1:] + ["", ""])[:2]
packages = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version for d in importlib.metadata.distributions()}
print(json.dumps({"python": platform.python_version(), "parent_image": parent, "base_image": root,
                  "packages": dict(sorted(packages.items()))}, indent=1))
