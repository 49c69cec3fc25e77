"""Render every file the server gets, from the config and the target's state.

Files are written under an output directory mirroring their absolute path on
the server; nothing here touches a server.
"""
import os
import re
from dataclasses import dataclass
from pathlib import Path

import jinja2

from . import auth, config, layout, tls
from .errors import ConfigError
from .state import State

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
HTTP2_DIRECTIVE_SINCE = (1, 25, 1)
CLIENT_MAX_BODY_SIZE = "256m"

# The second wall: each template value's grammar, checked whatever validated the config. A new key
# without a grammar here is refused too. Bools and ints are checked by type and range.
_NAME = r"[a-z0-9.:-]{1,253}"   # a DNS name, IPv4 or IPv6 literal (no zone id, no brackets)
_PATH = r"/[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*"
GRAMMAR = {"managed": r"[A-Za-z0-9 ,.;]+", "server_names": _NAME,
           "public_url": r"https://([a-z0-9.-]{1,253}|\[[0-9a-f:.]{2,45}\])(:[0-9]{1,5})?",
           "tls_cert": _PATH, "tls_key": _PATH, "htpasswd": _PATH, "authd": _PATH, "auth_service": r"[a-z0-9-]+",
           "auth_socket": _PATH, "web_group": r"[a-z_][a-z0-9_-]{0,31}", "jupyter_socket": _PATH,
           "container_socket": _PATH, "notebook_dir": _PATH, "client_max_body_size": r"[1-9][0-9]*[kmg]?",
           "user": r"[a-z_][a-z0-9_-]{0,31}", "tokens": _PATH, "token_header": r"X-[A-Za-z-]{1,64}",
           "session_key": _PATH, "session_nginx": _PATH, "session_service": r"[a-z0-9-]+",
           "session_cookie": r"(__Host-)?[a-z-]{1,64}",
           "identity_provider": r"[a-z_]+(\.[A-Za-z_]+)+", "access_log": _PATH,
           "dask_dashboard": r"(127\.0\.0\.1:[0-9]{1,5})?",
           # --tls acme (an empty value: not given)
           "tls": r"private|acme", "acme_domain": r"([a-z0-9.-]{1,253})?",
           "acme_email": r"([A-Za-z0-9._%+-]{1,64}@[a-z0-9.-]{1,253})?",
           "acme_directory": r"https://([a-z0-9.-]{1,253}|\[[0-9a-f:.]{2,45}\])(:[0-9]{1,5})?(/[A-Za-z0-9._~-]*)*",
           "acme_ca_bundle": f"({_PATH})?", "acme_config": _PATH, "acme_script": _PATH, "acme_status": _PATH,
           "acme_webroot": _PATH, "acme_service": r"[a-z0-9-]+", "acme_unit": _PATH, "acme_timer_unit": _PATH,
           "certbot_dir": _PATH, "certbot_debian_timer": r"[a-z0-9-]+\.timer", "fallback_cert": _PATH,
           "fallback_key": _PATH, "nginx_service": r"[a-z0-9-]+"}
PORTS = ("http_port", "https_port")


@dataclass(frozen=True)
class ServerFile:
    path: str           # absolute path on the server
    mode: str           # octal, as Ansible takes it
    group: str          # owner is always root
    service: str = ""   # what must reload when it changes: nginx, appliance-auth, appliance-certbot, jupyter
                        # ("" = nothing)
    secret: bool = False
    role: str = "web"   # the Ansible role that installs it


def environment():
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False)


def _refuse_outside_grammar(context):
    """Raise ConfigError (one line) for any value outside its key's grammar."""
    for key, value in context.items():
        if key == "http2_directive" and isinstance(value, bool):
            continue
        if key in PORTS and type(value) is int and 1 <= value <= 65535:
            continue
        values = value if key == "server_names" and isinstance(value, tuple) and value else (value,)
        if key in GRAMMAR and all(isinstance(v, str) and re.fullmatch(GRAMMAR[key], v) and ".." not in v
                                  for v in values):
            continue
        raise ConfigError(f"refusing to render {key} {value!r}: it holds characters outside its grammar")
    return context


def template_context(cfg, nginx_version=None, cluster=False):
    """The values templates see, each checked against its grammar (the config's own checks are the first
    wall). cluster: a Dask cluster runs (its dashboard is proxied under /dask/)."""
    return _refuse_outside_grammar({
        # nginx 1.25.1 made http2 a directive of its own and deprecated `listen ... http2`
        "http2_directive": (nginx_version or (0,)) >= HTTP2_DIRECTIVE_SINCE,
        "managed": "Written by provision.py; changes here are overwritten on the next run.",
        "server_names": cfg.server_names,
        "public_url": cfg.url.rstrip("/"),
        "http_port": cfg.http_port,
        "https_port": cfg.https_port,
        "tls_cert": layout.TLS_CERT,
        "tls_key": layout.TLS_KEY,
        "htpasswd": layout.HTPASSWD,
        "tokens": layout.TOKENS,
        "token_header": layout.TOKEN_HEADER,
        "session_key": layout.SESSION_KEY,
        "session_nginx": layout.SESSION_NGINX,
        "session_service": layout.SESSION_SERVICE,
        "session_cookie": layout.SESSION_COOKIE,
        "identity_provider": layout.IDENTITY_PROVIDER,
        "access_log": layout.NGINX_ACCESS_LOG,
        "authd": layout.AUTHD,
        "auth_service": layout.AUTH_SERVICE,
        "auth_socket": layout.AUTH_SOCKET,
        "web_group": layout.WEB_GROUP,
        "jupyter_socket": layout.JUPYTER_SOCKET,
        "container_socket": layout.IMAGE_SOCKET,
        "notebook_dir": layout.IMAGE_NOTEBOOKS,
        "client_max_body_size": CLIENT_MAX_BODY_SIZE,
        "user": cfg.user,
        "dask_dashboard": f"127.0.0.1:{layout.DASK_DASHBOARD_PORT}" if cluster else "",
        "tls": cfg.tls,
        "acme_domain": cfg.domain if cfg.tls == "acme" else "",
        "acme_email": cfg.acme_email or "",
        "acme_directory": cfg.acme_directory_url,
        "acme_ca_bundle": layout.ACME_CA_BUNDLE if cfg.acme_ca_bundle else "",
        "acme_config": layout.ACME_CONFIG,
        "acme_script": layout.ACME_SCRIPT,
        "acme_status": layout.ACME_STATUS,
        "acme_webroot": layout.ACME_WEBROOT,
        "acme_service": layout.ACME_SERVICE,
        "acme_unit": layout.ACME_UNIT,
        "acme_timer_unit": layout.ACME_TIMER_UNIT,
        "certbot_dir": layout.CERTBOT_DIR,
        "certbot_debian_timer": layout.CERTBOT_DEBIAN_TIMER,
        "fallback_cert": layout.FALLBACK_CERT,
        "fallback_key": layout.FALLBACK_KEY,
        "nginx_service": layout.NGINX,
    })


def prepare(cfg, interactive=None, env=None):
    """Make sure the target's CA, certificate and htpasswd exist; returns (state, cert, where)."""
    template_context(cfg)  # the names go into the state's path and certificate: refuse hostile ones first
    state = State(cfg.target_dir).ensure()
    cert = tls.ensure(state, cfg.server_names)
    where = auth.ensure_htpasswd(cfg, state, env=env, interactive=interactive)
    return state, cert, where


def render(cfg, state, out_dir, nginx_version=None, cluster=False):
    """Write every server file under out_dir; returns the list of ServerFile. nginx_version (a tuple) is the
    server's, when known: it decides the http2 syntax (the form every version takes when unknown)."""
    env = environment()
    context = template_context(cfg, nginx_version, cluster)
    public, secret, web = layout.FILE_MODE, layout.SECRET_MODE, layout.WEB_GROUP
    nginx, auth_service, jupyter = layout.NGINX, layout.AUTH_SERVICE, layout.CONTAINER
    acme, key_mode = cfg.tls == "acme", layout.TLS_KEY_MODE
    contents = {
        ServerFile(layout.NGINX_SITE, public, "root", nginx): env.get_template("nginx-site.conf.j2").render(context),
        ServerFile(layout.JUPYTER_CONFIG, public, "root", jupyter, role="jupyter"):
            env.get_template("jupyter_server_config.py.j2").render(context),
        ServerFile(layout.JUPYTER_TMPFILES, public, "root", role="jupyter"): layout.tmpfiles_line(),
        ServerFile(layout.AUTH_UNIT, public, "root", auth_service):
            env.get_template("appliance-auth.service.j2").render(context),
        ServerFile(layout.AUTH_SOCKET_UNIT, public, "root", auth_service):
            env.get_template("appliance-auth.socket.j2").render(context),
        ServerFile(layout.AUTHD, public, "root", auth_service):
            (Path(__file__).parent / "server" / "authd.py").read_bytes(),
        ServerFile(layout.SESSION_UNIT, public, "root", layout.SESSION_SERVICE):
            env.get_template("appliance-session.service.j2").render(context),
        ServerFile(layout.SESSION_PATH_UNIT, public, "root", layout.SESSION_SERVICE):
            env.get_template("appliance-session.path.j2").render(context),
    }
    if acme:  # nginx's certificate and key are the server's business (appliance/server/acme.py); the private
        # CA's wait beside them. The settings go first: the switch back to --tls private looks for them.
        contents.update({
            ServerFile(layout.ACME_CONFIG, public, "root"): env.get_template("acme.json.j2").render(context),
            ServerFile(layout.ACME_SCRIPT, public, "root"): (Path(__file__).parent / "server" / "acme.py").read_bytes(),
            ServerFile(layout.ACME_UNIT, public, "root", layout.ACME_SERVICE):
                env.get_template("appliance-certbot.service.j2").render(context),
            ServerFile(layout.ACME_TIMER_UNIT, public, "root", layout.ACME_SERVICE):
                env.get_template("appliance-certbot.timer.j2").render(context),
            ServerFile(layout.FALLBACK_CERT, public, "root"): state.read("server.crt"),
            ServerFile(layout.FALLBACK_KEY, key_mode, "root", secret=True): state.read("server.key"),
        })
        if cfg.acme_ca_bundle:
            contents[ServerFile(layout.ACME_CA_BUNDLE, public, "root")] = config.read_ca_bundle(cfg.acme_ca_bundle)
    else:
        contents[ServerFile(layout.TLS_CERT, public, "root", nginx)] = state.read("server.crt")
    contents[ServerFile(layout.CA_CERT, public, "root")] = state.read("ca.crt")
    if not acme:
        contents[ServerFile(layout.TLS_KEY, key_mode, "root", nginx, secret=True)] = state.read("server.key")
    contents[ServerFile(layout.HTPASSWD, secret, web, secret=True)] = state.read("htpasswd")  # authd re-reads it
    out_dir = Path(out_dir)
    for item, data in contents.items():
        target = out_dir / item.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        target.unlink(missing_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if item.secret else 0o644)
        with os.fdopen(fd, "wb") as out:
            out.write(data if isinstance(data, bytes) else data.encode())
    return list(contents)


def role_files(files, rendered):
    """The rendered files as the Ansible roles take them: {"web_files": [...], "jupyter_files": [...]}, each
    file with its local copy as src (ansible/tasks/managed-files.yml says what the fields mean)."""
    out = {"web_files": [], "jupyter_files": []}
    for item in files:
        out[f"{item.role}_files"].append({"path": item.path, "mode": item.mode, "group": item.group,
                                          "service": item.service, "secret": item.secret,
                                          "src": str(Path(rendered) / item.path.lstrip("/"))})
    return out
