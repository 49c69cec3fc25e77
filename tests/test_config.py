"""Validation, config sources and the state directory: fast unit tests."""
import os
import stat

import pytest
from passlib.apache import HtpasswdFile

from appliance import auth, config, layout, render, tls
from appliance.errors import ConfigError, StateError
from appliance.state import State

@pytest.fixture(autouse=True)
def ca_passphrases(tmp_path, monkeypatch):
    """The CA key's passphrase file goes under XDG_CONFIG_HOME: keep the tests' out of the real home."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


HOSTILE_DOMAINS = ["x.com; return 301 http://evil", "a{b}.com", "x.com\nlisten 81", "x .com", "-x.com",
                   "x..com", "a" * 64 + ".com", "*.example.com", "évil.com", ""]


@pytest.mark.parametrize("domain", HOSTILE_DOMAINS)
def test_hostile_domain_refused(domain):
    with pytest.raises(ConfigError):
        config.load({"domain": domain, "host": "192.0.2.1"}, env={})


@pytest.mark.parametrize("user", ["a:b", "a/b", "a\nb", "a\tb", "x" * 33, "Root", "1abc", ""])
def test_hostile_user_refused(user):
    with pytest.raises(ConfigError):
        config.load({"user": user}, env={})


@pytest.mark.parametrize("host", ["x.com;", "1.2.3.4 5", "a_b.com", "::1]"])
def test_hostile_host_refused(host):
    with pytest.raises(ConfigError):
        config.load({"host": host}, env={})


def test_sources_precedence(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('host = "192.0.2.7"\nuser = "alice"\nssh_port = 2200\n')
    cfg = config.load({"user": "bob"}, env={"APPLIANCE_SSH_PORT": "2201"}, config_file=cfg_file)
    assert (cfg.host, cfg.user, cfg.ssh_port) == ("192.0.2.7", "bob", 2201)
    with pytest.raises(Exception):
        cfg.user = "eve"  # frozen


@pytest.mark.parametrize("text, message", [('ssh_port = "many"', "ssh_port must be an integer"),
                                           ("user = 3.5", "user must be a string"),
                                           ("colour = 1", "unknown setting"),
                                           ("host = ", "not valid TOML")])
def test_bad_config_file(tmp_path, text, message):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(text)
    with pytest.raises(ConfigError, match=message):
        config.load({}, env={}, config_file=cfg_file)


def test_local_droplet_defaults():
    cfg = config.load({}, env={})
    assert cfg.is_local and cfg.ssh_port == 2222 and cfg.url == "https://127.0.0.1:8443/"


@pytest.mark.parametrize("password", ["", "has\nnewline", "short"])
def test_bad_password_refused(tmp_path, password):
    cfg = config.load({"host": "192.0.2.1", "state_dir": str(tmp_path)}, env={})
    with pytest.raises(ConfigError):
        auth.ensure_htpasswd(cfg, State(tmp_path / "t").ensure(), env={"APPLIANCE_PASSWORD": password},
                             interactive=False)


def _render(tmp_path, out, env, **flags):
    cfg = config.load({"host": "192.0.2.1", "state_dir": str(tmp_path / "state"), **flags}, env={})
    state, cert, _ = render.prepare(cfg, interactive=False, env=env)
    render.render(cfg, state, out)
    return cfg, state


def _snapshot(state):
    return {n: state.read(n) for n in ("ca.key", "ca.crt", "server.key", "server.crt", "htpasswd", "password")}


def test_state_is_stable_and_private(tmp_path):
    cfg, state = _render(tmp_path, tmp_path / "out1", env={})
    first = _snapshot(state)
    _render(tmp_path, tmp_path / "out2", env={})
    assert _snapshot(state) == first  # nothing rotated
    assert stat.S_IMODE(os.stat(state.path).st_mode) == 0o700
    for name in ("ca.key", "server.key", "htpasswd", "password"):
        assert stat.S_IMODE(os.stat(state.file(name)).st_mode) == 0o600, name
    for name in ("etc/appliance/tls/server.key", "etc/appliance/htpasswd"):
        assert stat.S_IMODE(os.stat(tmp_path / "out2" / name).st_mode) == 0o600
    password = first["password"].decode()
    assert HtpasswdFile.from_string(first["htpasswd"]).check_password("ds", password)
    assert first["htpasswd"].startswith(b"ds:$2y$12$")


def test_same_password_keeps_hash_new_one_replaces_it(tmp_path):
    env = {"APPLIANCE_PASSWORD": "correct horse battery"}
    cfg, state = _render(tmp_path, tmp_path / "o", env=env)
    first = state.read("htpasswd")
    assert state.read("password") is None  # nothing generated when a password is given
    _render(tmp_path, tmp_path / "o", env=env)
    assert state.read("htpasswd") == first
    _render(tmp_path, tmp_path / "o", env={"APPLIANCE_PASSWORD": "another long one"})
    assert state.read("htpasswd") != first
    assert HtpasswdFile.from_string(state.read("htpasswd")).check_password("ds", "another long one")


def test_certificate_follows_names(tmp_path):
    _, state = _render(tmp_path, tmp_path / "o", env={})
    before = _snapshot(state)
    _render(tmp_path, tmp_path / "o", env={}, domain="nb.example.org")
    after = _snapshot(state)
    # a new name needs a CA whose name constraints permit it: a new CA key (the old CA, still trusted by
    # browsers, must not be able to sign for the new name); the server keeps its key
    assert after["ca.key"] != before["ca.key"] and after["ca.crt"] != before["ca.crt"]
    assert after["server.key"] == before["server.key"] and after["server.crt"] != before["server.crt"]
    cert = tls.ensure(state, ("nb.example.org", "192.0.2.1"))
    assert tls.fingerprint(cert).count(":") == 31


@pytest.mark.parametrize("name, content", [("server.crt", b"garbage"), ("ca.key", b"not a key"),
                                           ("htpasswd", b"\xff\xfe")])
def test_corrupt_state_is_a_clear_error(tmp_path, name, content):
    _, state = _render(tmp_path, tmp_path / "o", env={})
    state.write(name, content)
    with pytest.raises(StateError, match=name):
        _render(tmp_path, tmp_path / "o", env={"APPLIANCE_PASSWORD": "some long password"})


def test_templates_refuse_undefined(tmp_path):
    env = render.environment()
    with pytest.raises(Exception, match="undefined"):
        env.get_template("nginx-site.conf.j2").render({})


@pytest.mark.parametrize("version, new_syntax", [(None, False), ((1, 22, 1), False), ((1, 25, 0), False),
                                                 ((1, 25, 1), True), ((1, 26, 3), True)])
def test_http2_syntax_follows_the_servers_nginx(tmp_path, version, new_syntax):
    cfg = config.load({"host": "192.0.2.1", "state_dir": str(tmp_path / "state")}, env={})
    state, _, _ = render.prepare(cfg, interactive=False, env={"APPLIANCE_PASSWORD": "a long password"})
    render.render(cfg, state, tmp_path / "out", nginx_version=version)
    site = (tmp_path / "out" / layout.NGINX_SITE.lstrip("/")).read_text()
    assert ("    http2 on;\n" in site) is new_syntax
    assert ("443 ssl http2 default_server;" in site) is not new_syntax
