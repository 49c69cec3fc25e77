"""Render every file the server gets, from the config and the target's state.

Files are written under an output directory mirroring their absolute path on
the server; nothing here touches a server.
"""
import os
from dataclasses import dataclass
from pathlib import Path

import jinja2

from . import auth, tls
from .state import State

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

NGINX_SITE = "/etc/nginx/sites-available/jupyter.conf"
ETC = "/etc/appliance"
TLS_CERT = f"{ETC}/tls/server.crt"
TLS_KEY = f"{ETC}/tls/server.key"
CA_CERT = f"{ETC}/tls/ca.crt"
HTPASSWD = f"{ETC}/htpasswd"
JUPYTER_CONFIG = f"{ETC}/jupyter_server_config.py"
JUPYTER_SOCKET = "/run/jupyter/jupyter.sock"
JUPYTER_TMPFILES = "/etc/tmpfiles.d/appliance-jupyter.conf"  # recreates the socket directory at boot
AUTHD = "/usr/local/lib/appliance/authd.py"
AUTH_UNIT = "/etc/systemd/system/appliance-auth.service"
AUTH_SOCKET_UNIT = "/etc/systemd/system/appliance-auth.socket"
AUTH_SOCKET = "/run/appliance-auth/auth.sock"
CONTAINER_NOTEBOOKS = "/home/ds/notebooks"  # the image's notebook directory
CLIENT_MAX_BODY_SIZE = "256m"


@dataclass(frozen=True)
class ServerFile:
    path: str           # absolute path on the server
    mode: str           # octal, as Ansible takes it
    group: str          # owner is always root
    service: str = ""   # what must reload when it changes: nginx, appliance-auth, jupyter
    secret: bool = False


def environment():
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False)


def template_context(cfg):
    return {
        "managed": "Written by provision.py; changes here are overwritten on the next run.",
        "server_names": cfg.server_names,
        "public_url": cfg.url.rstrip("/"),
        "http_port": cfg.http_port,
        "https_port": cfg.https_port,
        "tls_cert": TLS_CERT,
        "tls_key": TLS_KEY,
        "htpasswd": HTPASSWD,
        "authd": AUTHD,
        "auth_socket": AUTH_SOCKET,
        "jupyter_socket": JUPYTER_SOCKET,
        "notebook_dir": CONTAINER_NOTEBOOKS,
        "client_max_body_size": CLIENT_MAX_BODY_SIZE,
    }


def prepare(cfg, say=print, interactive=None, env=None):
    """Make sure the target's CA, certificate and htpasswd exist; returns (state, cert, where)."""
    state = State(cfg.target_dir).ensure()
    cert = tls.ensure(state, cfg.server_names)
    where = auth.ensure_htpasswd(cfg, state, env=env, interactive=interactive)
    return state, cert, where


def render(cfg, state, out_dir):
    """Write every server file under out_dir; returns the list of ServerFile."""
    env = environment()
    context = template_context(cfg)
    contents = {
        ServerFile(NGINX_SITE, "0644", "root", "nginx"): env.get_template("nginx-site.conf.j2").render(context),
        ServerFile(JUPYTER_CONFIG, "0644", "root", "jupyter"): env.get_template("jupyter_server_config.py.j2").render(context),
        ServerFile(JUPYTER_TMPFILES, "0644", "root"):
            f"d {Path(JUPYTER_SOCKET).parent} 2750 {cfg.user} www-data -\n",
        ServerFile(AUTH_UNIT, "0644", "root", "appliance-auth"): env.get_template("appliance-auth.service.j2").render(context),
        ServerFile(AUTH_SOCKET_UNIT, "0644", "root", "appliance-auth"):
            env.get_template("appliance-auth.socket.j2").render(context),
        ServerFile(AUTHD, "0644", "root", "appliance-auth"): (Path(__file__).parent / "authd.py").read_bytes(),
        ServerFile(TLS_CERT, "0644", "root", "nginx"): state.read("server.crt"),
        ServerFile(CA_CERT, "0644", "root"): state.read("ca.crt"),
        ServerFile(TLS_KEY, "0640", "www-data", "nginx", secret=True): state.read("server.key"),
        ServerFile(HTPASSWD, "0640", "www-data", secret=True): state.read("htpasswd"),
    }
    out_dir = Path(out_dir)
    for item, data in contents.items():
        target = out_dir / item.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        target.unlink(missing_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if item.secret else 0o644)
        with os.fdopen(fd, "wb") as out:
            out.write(data if isinstance(data, bytes) else data.encode())
    return list(contents)
