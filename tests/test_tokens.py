"""`provision.py token`: what the operator's side makes and what remote.py's command keeps on the server."""
import grp
import hashlib
import json
import os
import stat
import time

import pytest

import token_clients
from appliance import cli, config, layout, tokens
from appliance.errors import ConfigError
from appliance.server import authd


@pytest.fixture
def server(tmp_path):
    return token_clients.local_tokens_server(tmp_path / "tokens.json", tmp_path / "no-verifier.sock")


def _cfg(tmp_path):
    return config.load({"host": "203.0.113.5", "state_dir": str(tmp_path / "state")}, env={})


def test_create_prints_the_token_once_and_the_server_keeps_only_its_hash(tmp_path, server):
    lines = []
    token = tokens.create(_cfg(tmp_path), name="laptop", expires="12h", say=lines.append, server=server)
    assert len(token) >= 43 and f"  URL:   https://203.0.113.5/?token={token}" in lines
    kept = (tmp_path / "tokens.json").read_text()
    assert token not in kept
    entry, = json.loads(kept)["tokens"]
    assert entry["sha256"] == hashlib.sha256(token.encode()).hexdigest() and entry["name"] == "laptop"
    assert abs(entry["expires"] - (time.time() + 12 * 3600)) < 60
    st = os.stat(tmp_path / "tokens.json")
    assert stat.S_IMODE(st.st_mode) == int(layout.SECRET_MODE, 8) and st.st_uid == 0
    assert st.st_gid == grp.getgrnam(layout.WEB_GROUP).gr_gid
    state = [p.read_bytes() for p in (tmp_path / "state").rglob("*") if p.is_file()]
    assert not any(token.encode() in data for data in state)  # nothing of it is kept here


def test_list_and_revoke(tmp_path, server):
    cfg, lines = _cfg(tmp_path), []
    tokens.create(cfg, name="a", expires="never", say=lines.append, server=server)
    tokens.create(cfg, say=lines.append, server=server)  # a default name
    with pytest.raises(RuntimeError, match="exists already"):
        tokens.create(cfg, name="a", say=lines.append, server=server)
    listed = tokens.list_tokens(cfg, say=lines.append, server=server)
    assert listed[0]["name"] == "a" and listed[1]["name"].startswith("token-")
    assert listed[0]["expires"] is None and listed[0]["last_used"] is None  # no verifier answered: not known
    tokens.revoke(cfg, "a", say=lines.append, server=server)
    assert [t["name"] for t in tokens.list_tokens(cfg, say=lines.append, server=server)] == [listed[1]["name"]]
    with pytest.raises(RuntimeError, match="no token is named"):
        tokens.revoke(cfg, "a", say=lines.append, server=server)


@pytest.mark.parametrize("bad", ["", "90", "0d", "1y", "-1d", "never ", "1.5d"])
def test_expires_refuses_what_it_does_not_know(bad):
    with pytest.raises(ConfigError, match="--expires"):
        tokens.expiry(bad, 0)


def test_expiry_units():
    assert [tokens.expiry(t, 100) for t in ("12h", "90d", "2w", "never")] == \
        [100 + 43200, 100 + 90 * 86400, 100 + 14 * 86400, None]


@pytest.mark.parametrize("name", ["", "-x", "a b", "a/b", "x" * 65, "\u00e9"])
def test_bad_names_are_refused_before_anything_is_made(tmp_path, name, server):
    with pytest.raises(ConfigError, match="--name"):
        tokens.create(_cfg(tmp_path), name=name, say=print, server=server)
    assert not (tmp_path / "tokens.json").exists()


def test_cli_parses_the_token_commands():
    p = cli.parser()
    args = p.parse_args(["token", "create", "--name", "vscode", "--expires", "30d", "--host", "203.0.113.5"])
    assert (args.command, args.action, args.token_name, args.expires, args.host) == \
        ("token", "create", "vscode", "30d", "203.0.113.5")
    assert p.parse_args(["token", "create"]).expires == "90d"
    assert p.parse_args(["token", "revoke", "vscode"]).token_name == "vscode"
    assert p.parse_args(["token", "list"]).action == "list"


def test_the_verifier_and_jupyter_agree_on_the_trusted_header():
    assert authd.TOKEN_HEADER == layout.TOKEN_HEADER
