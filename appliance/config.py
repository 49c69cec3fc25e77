"""The frozen configuration: defaults < config file < environment < flags.

Every value that can reach a file on the server is validated here, before
anything is rendered, so a template never sees hostile text.
"""
import dataclasses
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from .errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
LOCAL = "local"  # the target name of the local droplet
ENV_PREFIX = "APPLIANCE_"

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]*$")
_TZ = re.compile(r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$")
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_SIZE = re.compile(r"^[0-9]+[kmg]?$")
_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")  # as OpenSSH prints it; matched whole


@dataclass(frozen=True)
class Config:
    host: str = LOCAL            # IP or DNS name of the server; "local" = the local droplet
    domain: str | None = None    # extra DNS name for the certificate and nginx
    user: str = "ds"             # Linux user on the server and the login name in the browser
    ssh_user: str = "root"
    ssh_port: int = 22
    ssh_key: str | None = None
    ssh_host_key_fingerprint: str | None = None  # SHA256:... of the server's host key, pinned on first contact
    image: str = "scipy"
    password_file: str | None = None
    timezone: str = "UTC"
    swap_mb: int = 2048          # swap file size when the server has less than 2 GiB of RAM; 0 = none
    memory: str = "0"            # notebook container memory limit ("4g"); "0" = 75% of the server's RAM
    cpus: float = 0.0            # notebook container CPU limit; 0 = all CPUs
    http_port: int = 80          # nginx listen ports on the server
    https_port: int = 443
    public_https_port: int = 443  # the HTTPS port the browser uses (differs behind a port mapping)
    bcrypt_rounds: int = 12
    state_dir: str = str(ROOT / ".appliance")

    @property
    def is_local(self):
        return self.host == LOCAL

    @property
    def server_names(self):
        """Names the certificate and nginx answer to, first one is used in URLs."""
        names = [self.domain] if self.domain else []
        names.append("127.0.0.1" if self.is_local else self.host)
        if self.is_local:
            names.append("localhost")
        return tuple(dict.fromkeys(names))

    @property
    def url(self):
        port = "" if self.public_https_port == 443 else f":{self.public_https_port}"
        name = self.server_names[0]
        if ":" in name:
            name = f"[{name}]"
        return f"https://{name}{port}/"

    @property
    def target_dir(self):
        return Path(self.state_dir) / self.host


def validate_hostname(value, what):
    name = value.lower().rstrip(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise ConfigError(f"{what} {value!r} is not a valid DNS name (letters, digits, '-' and '.')")
    return name


def validate_host(value):
    if value == LOCAL:
        return value
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return validate_hostname(value, "host")


def validate_user(value, what="user name"):
    if not value:
        raise ConfigError(f"{what} is empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in value) or ":" in value:
        raise ConfigError(f"{what} {value!r} contains ':' or a control character")
    if len(value) > 32 or not _USER.match(value):
        raise ConfigError(f"{what} {value!r} is not a valid Linux user name "
                          "(lower-case letters, digits, '_' and '-', at most 32 characters)")
    return value


def validate_port(value, what):
    if not 1 <= value <= 65535:
        raise ConfigError(f"{what} {value} is not a port number (1-65535)")
    return value


def _check(cfg):
    """Validate and normalise every field; returns the checked config."""
    changes = {"host": validate_host(cfg.host), "user": validate_user(cfg.user),
               "ssh_user": validate_user(cfg.ssh_user, "SSH user")}
    if cfg.domain is not None:
        changes["domain"] = validate_hostname(cfg.domain, "domain")
    for name in ("ssh_port", "http_port", "https_port", "public_https_port"):
        validate_port(getattr(cfg, name), name.replace("_", " "))
    if cfg.ssh_host_key_fingerprint is not None and not _FINGERPRINT.fullmatch(cfg.ssh_host_key_fingerprint):
        raise ConfigError(f"SSH host key fingerprint {cfg.ssh_host_key_fingerprint!r} is not like SHA256:<43 "
                          "base64 characters> (ssh-keygen -lf prints it)")
    if not _TZ.match(cfg.timezone) or ".." in cfg.timezone:
        raise ConfigError(f"timezone {cfg.timezone!r} is not a time zone name like UTC or Europe/Paris")
    if not _IMAGE.match(cfg.image):
        raise ConfigError(f"image {cfg.image!r} is not a valid image name")
    if not _SIZE.match(cfg.memory.lower()):
        raise ConfigError(f"memory limit {cfg.memory!r} is not a size like 4g or 512m")
    if cfg.cpus < 0 or cfg.swap_mb < 0:
        raise ConfigError("cpus and swap_mb must not be negative")
    if not 10 <= cfg.bcrypt_rounds <= 16:
        raise ConfigError(f"bcrypt_rounds {cfg.bcrypt_rounds} is outside 10-16")
    for name in ("ssh_key", "password_file"):
        path = getattr(cfg, name)
        if path is not None and not Path(path).expanduser().is_file():
            raise ConfigError(f"{name.replace('_', ' ')} {path!r} is not a readable file")
    return dataclasses.replace(cfg, **changes)


def _coerce(field, value, source):
    """Turn a value from a config file or the environment into the field's type."""
    kind = field.type if field.type in (int, float) else str
    if not isinstance(value, bool):
        try:
            if kind is str and isinstance(value, (str, int)):
                return str(value)
            if kind is not str and isinstance(value, (str, int, float)):
                return kind(value)
        except ValueError:
            pass
    noun = {int: "an integer", float: "a number", str: "a string"}[kind]
    raise ConfigError(f"{source}: {field.name} must be {noun}, got {value!r}")


def load(flags=None, env=None, config_file=None):
    """Build the frozen Config from defaults, a TOML file, APPLIANCE_* variables and flags.

    `flags` holds only what the user gave on the command line (None values are ignored).
    """
    env = os.environ if env is None else env
    by_name = {f.name: f for f in fields(Config)}
    values = {}
    if config_file:
        try:
            data = tomllib.loads(Path(config_file).expanduser().read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from None
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in by_name:
                raise ConfigError(f"config file {config_file}: unknown setting {key!r}")
            values[name] = _coerce(by_name[name], value, f"config file {config_file}")
    for name, field in by_name.items():
        key = ENV_PREFIX + name.upper()
        if env.get(key):
            values[name] = _coerce(field, env[key], f"environment variable {key}")
    values.update({k: v for k, v in (flags or {}).items() if v is not None})
    if values.get("host") in (None, LOCAL):
        # The local droplet publishes its ports on 127.0.0.1 (see appliance.droplet).
        values.setdefault("ssh_port", 2222)
        values.setdefault("public_https_port", 8443)
    return _check(Config(**values))
