"""The one error hierarchy. Every expected failure is an ApplianceError whose
message is a complete, one-line explanation for the user; only the CLI turns
it into an exit code."""


class ApplianceError(Exception):
    exit_code = 1


class ConfigError(ApplianceError):
    """Bad flags, environment or config file."""
    exit_code = 2


class SetupError(ApplianceError):
    """The local machine lacks something the tool needs (venv, Docker engine)."""


class StateError(ApplianceError):
    """The local state directory is missing, foreign or corrupt."""


class ImageError(ApplianceError):
    """Building or inspecting an image failed."""


class DeployError(ApplianceError):
    """Provisioning a server failed."""


class BackupError(ApplianceError):
    """A backup could not be made, or an archive is not a sound backup."""


class CloudError(ApplianceError):
    """A cloud provider's API refused or failed a request (token, quota, size, region)."""
