#!/usr/bin/env python3
"""provision.py: one-shot provisioner for a secure, containerized Jupyter appliance.

Thin entry: install into .venv on first use, then hand over to appliance.cli.
"""
import sys

from appliance import bootstrap
from appliance.errors import ApplianceError

if __name__ == "__main__":
    try:
        bootstrap.reexec_in_venv(__file__)
    except ApplianceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    from appliance import cli
    cli.main()
