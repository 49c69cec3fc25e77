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

# Allowlist grammars, always used with fullmatch (`$` would also match before a trailing newline).
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")   # one LDH label of a DNS name
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")        # a Debian user name
_TZ = re.compile(r"[A-Za-z][A-Za-z0-9_+-]{0,29}(/[A-Za-z][A-Za-z0-9_+-]{0,29}){0,2}")  # UTC, Area/City, Etc/GMT+5
_IMAGE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_SIZE = re.compile(r"0|[1-9][0-9]{0,8}[kmg]")
# Debian's base system accounts (base-passwd's passwd.master) and the usual package-made ones: never the
# appliance's user, whatever the server has (up also refuses any system account that exists there).
SYSTEM_USERS = frozenset("root daemon bin sys sync games man lp mail news uucp proxy www-data backup list irc gnats "
                         "_apt nobody sshd messagebus polkitd systemd-network systemd-resolve systemd-timesync "
                         "systemd-coredump _chrony ntp postfix dnsmasq docker".split())
MAX_SWAP_MB = 65536
MAX_CPUS = 1024
CLOUDS = ("digitalocean", "aws")
_CLOUD_NAME = re.compile(r"(?!-)[a-z0-9-]{1,40}(?<!-)")         # the server's name (a DNS label, short enough
                                                              # for the provider's volume and group names)
_DO_SIZE = re.compile(r"[a-z0-9]{1,12}(-[a-z0-9]{1,12}){1,4}")  # s-2vcpu-4gb
_DO_REGION = re.compile(r"[a-z]{3}[1-9]")                       # fra1
_AWS_REGION = re.compile(r"[a-z]{2}(-gov)?-[a-z]{4,10}-[1-9]")  # eu-central-1
_INSTANCE_TYPE = re.compile(r"[a-z][a-z0-9-]{0,15}\.[a-z0-9]{1,15}")  # t3.medium
MAX_VOLUME_GB = 16384
MAX_LOCAL_WORKERS = 8
_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")  # as OpenSSH prints it; matched whole
TLS_MODES = ("private", "acme")
BUILD_ON = ("auto", "here", "server")
LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"  # Let's Encrypt's production ACME directory
LETSENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9_%+-]{1,64}(\.[A-Za-z0-9_%+-]{1,64}){0,8}")  # dot-atom, the usual characters
_DIRECTORY = re.compile(r"https://(?P<host>\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,253})(:(?P<port>[0-9]{1,5}))?"
                        r"(?P<path>(/[A-Za-z0-9._~-]{0,200}){0,16})")  # no user, query or fragment


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
    cloud: str | None = None     # create the server through "digitalocean" or "aws" (appliance/cloud)
    name: str = "appliance"      # the cloud server's name: a second up with the same name finds it
    region: str | None = None    # default fra1 (DigitalOcean), eu-central-1 (AWS)
    size: str = "s-2vcpu-4gb"    # DigitalOcean droplet size
    instance_type: str = "t3.medium"  # AWS instance type
    volume_gb: int = 10          # the notebooks volume
    ssh_from: str | None = None  # CIDR allowed to reach SSH through the cloud firewall (default: anywhere)
    workers: int | None = None   # Dask workers: this many local worker droplets; None = as the last up had
    worker_hosts: str = ""       # Dask workers with --host: these servers, comma-separated ("" = as last time)
    worker_memory: str = "0"     # each worker's memory limit ("2g"); "0" = 75% of the worker server's RAM
    tls: str = "private"         # "private": a certificate from the appliance's private CA; "acme": from an ACME CA
                                 # (Let's Encrypt) for domain, obtained and renewed on the server by certbot
    acme_email: str | None = None      # the ACME account's contact (expiry warnings); none: no contact
    acme_directory: str | None = None  # the ACME CA's directory URL (default LETSENCRYPT)
    acme_ca_bundle: str | None = None  # a local PEM file trusted for the ACME API only (a test or in-house CA)
    build_on: str = "auto"       # where the notebook image is built: "here" (and sent), "server", or "auto"
                                 # (the server when the upload is slow and it reaches the package index)

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

    def worker_list(self, remembered=()):
        """The worker servers ("local-1".. for local worker droplets, else --worker-host names): as asked,
        else as `remembered` from the last up; --workers 0 means none."""
        if self.workers == 0:
            return ()
        if self.is_local:
            return tuple(f"{LOCAL}-{i}" for i in range(1, self.workers + 1)) if self.workers else tuple(remembered)
        return tuple(h for h in self.worker_hosts.split(",") if h) or tuple(remembered)
    @property
    def acme_directory_url(self):
        return self.acme_directory or LETSENCRYPT


def validate_hostname(value, what):
    """An LDH DNS name: ASCII labels of 1-63 letters, digits and '-' (not at either end), at most 253
    characters, no trailing dot, not all digits at the end (that is an IP address). Upper case is
    lowered (DNS ignores case); anything else outside the grammar is refused, never repaired."""
    name = value.lower() if value.isascii() else value
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        raise ConfigError(f"{what} {value!r} is not a valid DNS name (ASCII letters, digits, '-' and '.', "
                          "labels of 1-63 characters, no trailing dot)")
    return name


def validate_host(value):
    """"local", an IPv4 or IPv6 address with nothing after it (no zone id, no brackets), or a DNS name."""
    if value == LOCAL:
        return value
    try:
        if ":" in value:
            if not value.isascii() or "%" in value:  # a zone id is free text to ipaddress
                raise ValueError(value)
            return str(ipaddress.IPv6Address(value))
        if value.isascii() and value.replace(".", "").isdigit():
            return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ConfigError(f"host {value!r} is not an IPv4 address or an IPv6 address without zone id "
                          "or brackets") from None
    return validate_hostname(value, "host")


def validate_user(value, what="user name"):
    if not _USER.fullmatch(value):
        raise ConfigError(f"{what} {value!r} is not a valid Linux user name (a lower-case letter or '_', "
                          "then lower-case letters, digits, '_' or '-', at most 32 characters)")
    return value


def validate_account(value):
    """The appliance's user: a valid user name that is not a system account."""
    if validate_user(value) in SYSTEM_USERS or value.startswith("systemd-"):
        raise ConfigError(f"user name {value!r} is a system account; choose another, e.g. ds")
    return value


def validate_port(value, what):
    if not 1 <= value <= 65535:
        raise ConfigError(f"{what} {value} is not a port number (1-65535)")
    return value


def validate_email(value):
    """An e-mail address for the ACME account: a dot-atom local part of the usual characters, '@', an LDH
    domain with at least two labels (lowered)."""
    local, at, domain = value.partition("@") if value.isascii() else ("", "", "")
    try:
        domain = validate_hostname(domain, "acme email domain") if "." in domain else None
    except ConfigError:
        domain = None
    if not at or len(value) > 254 or len(local) > 64 or not _EMAIL_LOCAL.fullmatch(local) or domain is None:
        raise ConfigError(f"acme email {value!r} is not an e-mail address like admin@example.org")
    return f"{local}@{domain}"


def validate_acme_directory(value):
    """An https:// URL of an ACME directory: an LDH name, IPv4 or [IPv6] host, an optional port, a path of
    plain characters; no user, query, fragment, space or '..'. Returns it with the host lowered."""
    if value.lower().startswith("http://"):
        raise ConfigError(f"acme directory {value!r} is not an https:// URL (the ACME API is only spoken over TLS)")
    found = _DIRECTORY.fullmatch(value) if value.isascii() and ".." not in value else None
    if found:
        host = found["host"]
        try:
            host = f"[{ipaddress.IPv6Address(host[1:-1])}]" if host.startswith("[") else validate_host(host)
        except (ValueError, ConfigError):
            found = None
    if not found or host == LOCAL or (found["port"] and not 1 <= int(found["port"]) <= 65535):
        raise ConfigError(f"acme directory {value!r} is not a URL like {LETSENCRYPT} (https, a host name or "
                          "address, an optional port, a plain path; no spaces, query or fragment)")
    return f"https://{host}{':' + str(int(found['port'])) if found['port'] else ''}{found['path']}"


def read_ca_bundle(path):
    """The PEM certificates of an ACME CA bundle, re-encoded (nothing else of the file travels); ConfigError
    when the file holds none."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    try:
        data = Path(path).expanduser().read_bytes()
        certs = x509.load_pem_x509_certificates(data)
    except OSError as exc:
        raise ConfigError(f"acme CA bundle {path!r} is not a readable file ({exc.strerror})") from None
    except ValueError:
        certs = []
    if not certs:
        raise ConfigError(f"acme CA bundle {path!r} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


def _check_tls(cfg):
    """The certificate's settings; returns the normalised ones."""
    changes = {}
    if cfg.acme_email is not None:
        changes["acme_email"] = validate_email(cfg.acme_email)
    if cfg.acme_directory is not None:
        changes["acme_directory"] = validate_acme_directory(cfg.acme_directory)
    if cfg.tls not in TLS_MODES:
        raise ConfigError(f"tls {cfg.tls!r} is not one of {', '.join(TLS_MODES)}")
    if cfg.tls != "acme":
        given = [name for name in ("acme_email", "acme_directory", "acme_ca_bundle") if getattr(cfg, name)]
        if given:
            raise ConfigError(f"{given[0].replace('_', ' ')} is only used with --tls acme (a certificate from an "
                              "ACME CA such as Let's Encrypt)")
        return changes
    if cfg.domain is None:
        raise ConfigError("tls acme needs --domain NAME: the DNS name, pointing at the server, that the "
                          "certificate is for (ACME CAs do not certify IP addresses here)")
    if cfg.http_port != 80:
        raise ConfigError(f"tls acme needs nginx's HTTP port to be 80, not {cfg.http_port} (http_port): the ACME CA "
                          "checks the domain there (HTTP-01)")
    if cfg.acme_ca_bundle is not None:
        read_ca_bundle(cfg.acme_ca_bundle)
    return changes


def _check(cfg):
    """Validate and normalise every field; returns the checked config."""
    changes = {"host": validate_host(cfg.host), "user": validate_account(cfg.user),
               "ssh_user": validate_user(cfg.ssh_user, "SSH user"), "memory": cfg.memory.lower()}
    if cfg.domain is not None:
        changes["domain"] = validate_hostname(cfg.domain, "domain")
    for name in ("ssh_port", "http_port", "https_port", "public_https_port"):
        validate_port(getattr(cfg, name), name.replace("_", " "))
    if cfg.ssh_host_key_fingerprint is not None and not _FINGERPRINT.fullmatch(cfg.ssh_host_key_fingerprint):
        raise ConfigError(f"SSH host key fingerprint {cfg.ssh_host_key_fingerprint!r} is not like SHA256:<43 "
                          "base64 characters> (ssh-keygen -lf prints it)")
    changes.update(_check_cloud(cfg))
    changes.update(_check_workers(cfg))
    changes.update(_check_tls(cfg))
    if not _TZ.fullmatch(cfg.timezone):
        raise ConfigError(f"timezone {cfg.timezone!r} is not a time zone name like UTC or Europe/Paris")
    if cfg.build_on not in BUILD_ON:
        raise ConfigError(f"build_on {cfg.build_on!r} is not one of {', '.join(BUILD_ON)}")
    if not _IMAGE.fullmatch(cfg.image):
        raise ConfigError(f"image {cfg.image!r} is not a valid image name")
    if not (cfg.memory.isascii() and _SIZE.fullmatch(changes["memory"])):
        raise ConfigError(f"memory limit {cfg.memory!r} is not 0 or a size like 4g or 512m")
    if not 0 <= cfg.cpus <= MAX_CPUS:  # also refuses nan
        raise ConfigError(f"cpus {cfg.cpus} is not a number from 0 to {MAX_CPUS}")
    if not 0 <= cfg.swap_mb <= MAX_SWAP_MB:
        raise ConfigError(f"swap_mb {cfg.swap_mb} is not from 0 to {MAX_SWAP_MB}")
    if not 10 <= cfg.bcrypt_rounds <= 16:
        raise ConfigError(f"bcrypt_rounds {cfg.bcrypt_rounds} is outside 10-16")
    for name in ("ssh_key", "password_file"):
        path = getattr(cfg, name)
        if path is not None and not Path(path).expanduser().is_file():
            raise ConfigError(f"{name.replace('_', ' ')} {path!r} is not a readable file")
    return dataclasses.replace(cfg, **changes)


def _check_workers(cfg):
    if cfg.workers is not None and not 0 <= cfg.workers <= MAX_LOCAL_WORKERS:
        raise ConfigError(f"workers {cfg.workers} is not from 0 to {MAX_LOCAL_WORKERS}")
    if cfg.workers and not cfg.is_local:
        raise ConfigError("--workers makes local worker droplets: with --host, name the workers with --worker-host")
    hosts = [validate_host(h) for h in cfg.worker_hosts.split(",") if h] if cfg.worker_hosts else []
    if hosts and cfg.is_local:
        raise ConfigError("--worker-host needs --host (the local droplet's workers come from --workers N)")
    if LOCAL in hosts or len(set(hosts)) != len(hosts) or cfg.host in hosts:
        raise ConfigError("--worker-host: each worker once, none of them the appliance's server or 'local'")
    memory = cfg.worker_memory.lower()
    if not (cfg.worker_memory.isascii() and _SIZE.fullmatch(memory)):
        raise ConfigError(f"worker memory {cfg.worker_memory!r} is not 0 or a size like 2g or 512m")
    return {"worker_hosts": ",".join(hosts), "worker_memory": memory}


def _check_cloud(cfg):
    """The cloud settings (only with --cloud); returns the normalised ones."""
    if cfg.cloud is None:
        return {}
    if cfg.cloud not in CLOUDS:
        raise ConfigError(f"cloud {cfg.cloud!r} is not one of {', '.join(CLOUDS)}")
    if cfg.host != LOCAL:
        raise ConfigError("--cloud creates the server: give either --cloud or --host, not both")
    if not _CLOUD_NAME.fullmatch(cfg.name):
        raise ConfigError(f"name {cfg.name!r} is not 1-40 lower-case letters, digits and '-' (not at either end)")
    region_grammar = _DO_REGION if cfg.cloud == "digitalocean" else _AWS_REGION
    if cfg.region is not None and not region_grammar.fullmatch(cfg.region):
        example = "fra1" if cfg.cloud == "digitalocean" else "eu-central-1"
        raise ConfigError(f"region {cfg.region!r} is not a {cfg.cloud} region name like {example}")
    if not _DO_SIZE.fullmatch(cfg.size):
        raise ConfigError(f"size {cfg.size!r} is not a DigitalOcean size slug like s-2vcpu-4gb")
    if not _INSTANCE_TYPE.fullmatch(cfg.instance_type):
        raise ConfigError(f"instance type {cfg.instance_type!r} is not an EC2 instance type like t3.medium")
    if not 1 <= cfg.volume_gb <= MAX_VOLUME_GB:
        raise ConfigError(f"volume_gb {cfg.volume_gb} is not from 1 to {MAX_VOLUME_GB}")
    if cfg.ssh_from is None:
        return {}
    try:
        if not cfg.ssh_from.isascii() or "/" not in cfg.ssh_from:
            raise ValueError(cfg.ssh_from)
        return {"ssh_from": str(ipaddress.ip_network(cfg.ssh_from, strict=True))}
    except ValueError:
        raise ConfigError(f"--ssh-from {cfg.ssh_from!r} is not a network like 203.0.113.7/32 (no host bits "
                          "set past the prefix)") from None


def _coerce(field, value, source):
    """Turn a value from a config file or the environment into the field's type."""
    kind = int if field.type == int | None else field.type if field.type in (int, float) else str
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
    if values.get("host") in (None, LOCAL) and not values.get("cloud"):
        # The local droplet publishes its ports on 127.0.0.1 (see appliance.droplet).
        values.setdefault("ssh_port", 2222)
        values.setdefault("public_https_port", 8443)
    return _check(Config(**values))
