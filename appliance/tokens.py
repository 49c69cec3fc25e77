"""API tokens for tools (VS Code, a local JupyterLab, scripts): `provision.py token create|list|revoke`.

A token is made here (256 random bits), printed once and never stored here: the server keeps only its
SHA-256, with its name, creation and expiry, in layout.TOKENS, which the login verifier re-reads when it
changes (a revoked token is refused on the next request). The hash goes to the server on remote.py's
stdin, never on a command line.
"""
import functools
import hashlib
import json
import re
import secrets
import time

from . import layout, ops, ssh
from .errors import ConfigError, DeployError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
UNITS = {"h": 3600, "d": 86400, "w": 7 * 86400}
EXPIRES = re.compile(r"([1-9][0-9]{0,4})([hdw])")


def expiry(text, now):
    """Epoch seconds when a token made at `now` expires ("90d", "12h", "52w"), or None for "never"."""
    if text == "never":
        return None
    match = EXPIRES.fullmatch(text or "")
    if not match:
        raise ConfigError(f"--expires {text!r}: give a number of hours, days or weeks (12h, 90d, 52w) or never")
    return now + int(match[1]) * UNITS[match[2]]


def _over_ssh(cfg, say, request):
    """Run remote.py's tokens command on cfg's server with request on its stdin; the tokens as it lists them."""
    with ops.session(cfg, say) as (target, _):
        r = ssh.remote(target, "tokens", layout.TOKENS, layout.SECRET_MODE, layout.WEB_GROUP, layout.AUTH_SOCKET,
                       input=json.dumps(request), capture_output=True, text=True)
    if r.returncode != 0:
        raise DeployError(f"token {request['op']} on {cfg.host}: {ssh.last_line(r.stderr)}")
    return json.loads(r.stdout)


def _server(cfg, say, server):
    return server or functools.partial(_over_ssh, cfg, say)


def create(cfg, name=None, expires="90d", say=print, server=None):
    """Make a token, have the server keep its hash, print it once with the URL to paste; returns the token."""
    now = int(time.time())
    name = time.strftime("token-%Y%m%d-%H%M%S", time.gmtime(now)) if name is None else name
    if not NAME.fullmatch(name):
        raise ConfigError(f"--name {name!r}: use up to 64 letters, digits, '.', '_' or '-'")
    ends = expiry(expires, now)
    token = secrets.token_urlsafe(32)
    _server(cfg, say, server)({"op": "create", "name": name, "created": now, "expires": ends,
                               "sha256": hashlib.sha256(token.encode()).hexdigest()})
    say(f"Token {name!r} created, valid {'until ' + _when(ends) if ends else 'until revoked'}. "
        "It is shown only now; keep it like a password:")
    say(f"  token: {token}")
    say(f"  URL:   {cfg.url.rstrip('/')}/?token={token}")
    say(f"Revoke it with: provision.py token revoke {name}")
    return token


def _when(epoch):
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch)) if epoch else "-"


def list_tokens(cfg, say=print, server=None):
    """Print every token's name, creation, expiry and last use (since the verifier last started)."""
    tokens = _server(cfg, say, server)({"op": "list"})
    if not tokens:
        say("No tokens (make one with: provision.py token create --name NAME)")
        return tokens
    now = time.time()
    rows = [("NAME", "CREATED", "EXPIRES", "LAST USED")]
    rows += [(t["name"], _when(t["created"]),
              _when(t["expires"]) + (" (expired)" if t["expires"] and t["expires"] <= now else ""),
              _when(t["last_used"])) for t in tokens]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        say("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
    return tokens


def revoke(cfg, name, say=print, server=None):
    """Remove a token from the server's file: refused from the next request on, no restart."""
    _server(cfg, say, server)({"op": "revoke", "name": name})
    say(f"Token {name!r} revoked: requests with it are refused from now on")

