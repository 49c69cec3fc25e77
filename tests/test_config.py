"""Validation, config sources and the state directory: fast unit tests."""
import dataclasses
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time

import pytest
from passlib.apache import HtpasswdFile

from appliance import auth, config, layout, render, ssh, tls
from appliance.errors import ConfigError, DeployError, StateError
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


@pytest.mark.parametrize("user", ["a:b", "a/b", "a\nb", "ab\n", "a\tb", "x" * 33, "Root", "1abc", "", "root",
                                  "www-data", "nobody", "sshd", "daemon"])
def test_hostile_user_refused(user):
    with pytest.raises(ConfigError):
        config.load({"user": user}, env={})


@pytest.mark.parametrize("host", ["x.com;", "1.2.3.4 5", "a_b.com", "::1]", "fe80::1%eth0", "::1%x;allow all;#",
                                  "1.2.3.4\n", "x.com\n", "x.com."])
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


def test_base_passwd_accounts_are_system_accounts():
    """Every account of Debian's base-passwd is refused as the appliance's user."""
    master = "/usr/share/base-passwd/passwd.master"
    if not os.path.exists(master):
        pytest.skip(f"{master} (Debian's base-passwd) is not here")
    names = [line.split(":")[0] for line in open(master) if line.strip()]
    assert names and set(names) <= config.SYSTEM_USERS


@pytest.mark.parametrize("value, normal", [("Example.COM", "example.com"), ("192.0.2.1", "192.0.2.1"),
                                           ("2001:DB8:0:0::1", "2001:db8::1"), ("xn--bcher-kva.example", None),
                                           ("nb-1.example.org", None), ("myserver", None)])
def test_good_hosts_are_kept_normalised(value, normal):
    assert config.load({"host": value}, env={}).host == (normal or value)


def test_good_values_of_every_field_pass(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('timezone = "America/Argentina/Buenos_Aires"\nmemory = "4G"\ncpus = 1.5\nswap_mb = 0\n'
                    'user = "alice_2"\ndomain = "nb.example.org"\n')
    cfg = config.load({"host": "192.0.2.1"}, env={"APPLIANCE_TIMEZONE": "Etc/GMT+5"}, config_file=toml)
    assert (cfg.timezone, cfg.memory, cfg.cpus, cfg.user) == ("Etc/GMT+5", "4g", 1.5, "alice_2")


WALL = [("host", "::1%x;satisfy any;allow all;#"), ("host", "x.com\nlisten 81"), ("host", "a b"),
        ("domain", "x.com; return 301 http://evil"), ("domain", "x.com\n"), ("domain", "\u212aelvin.com"),
        ("user", "a\nb"), ("user", "root d"), ("user", "ds;"), ("http_port", 0), ("https_port", True),
        ("public_https_port", "443; listen 81"), ("tls", "acme;"), ("tls", "acme\n"),
        ("acme_email", 'a@x.org", "x": "'), ("acme_email", "a@x.org\nb"), ("acme_directory", "http://x.org/dir"),
        ("acme_directory", "https://x.org/dir\nExecStart=/bin/sh"), ("acme_directory", "https://x.org/../dir"),
        ("acme_directory", "https://x.org/dir?q=1")]


@pytest.mark.parametrize("field, value", WALL)
def test_renderer_refuses_hostile_values_whatever_validated_them(tmp_path, field, value):
    """A caller that skips config.load (a Config built directly or replaced afterwards) still cannot
    get a hostile value into a rendered file or the state: one line, nothing written."""
    good = config.load({"host": "192.0.2.1", "state_dir": str(tmp_path / "state")}, env={})
    state, _, _ = render.prepare(good, interactive=False, env={"APPLIANCE_PASSWORD": "a long password"})
    hostile = dataclasses.replace(good, **{field: value})
    with pytest.raises(ConfigError, match="refusing to render") as refused:
        render.render(hostile, state, tmp_path / "out")
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="refusing to render"):
        render.prepare(hostile, interactive=False, env={"APPLIANCE_PASSWORD": "a long password"})
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["192.0.2.1"]


@pytest.mark.parametrize("tls", ["private", "acme"])
def test_template_context_values_all_have_a_grammar(tls):
    cfg = config.load({"host": "192.0.2.1", "domain": "nb.example.org", "tls": tls}, env={})
    assert set(render.template_context(cfg)) <= set(render.GRAMMAR) | set(render.PORTS) | {"http2_directive"}


# --tls acme: every value is checked before anything is rendered; each refusal is one line naming the field.
ACME_REFUSED = [
    ({"tls": "acme"}, "tls acme needs --domain"),
    ({"tls": "acme", "domain": "nb.example.org", "http_port": 8080}, "tls acme needs nginx's HTTP port to be 80"),
    ({"tls": "ACME", "domain": "nb.example.org"}, "tls 'ACME' is not one of private, acme"),
    ({"tls": "letsencrypt", "domain": "nb.example.org"}, "is not one of"),
    ({"acme_email": "me@example.org"}, "acme email is only used with --tls acme"),
    ({"acme_directory": "https://x.org/dir"}, "acme directory is only used with --tls acme"),
    ({"acme_ca_bundle": "/etc/hostname"}, "acme ca bundle is only used with --tls acme"),
    *[({"tls": "acme", "domain": "nb.example.org", "acme_email": email}, "is not an e-mail address")
      for email in ["me", "me@", "@example.org", "me@localhost", "me@example", "me..you@example.org",
                    ".me@example.org", "me.@example.org", "me@example.org\n", "me @example.org", "me@exa mple.org",
                    "me@example.org;", "me@example.org,you@example.org", "<me@example.org>", "m\u00e9@example.org",
                    "me@ex\u0430mple.org", "me@[192.0.2.1]", "me@-example.org", "me\0@example.org", "$(id)@x.org",
                    "`id`@example.org", "x" * 65 + "@example.org", "me@" + "a" * 64 + ".org", ""]],
    *[({"tls": "acme", "domain": "nb.example.org", "acme_directory": url}, "is not an https:// URL")
      for url in ["http://acme.example.org/directory", "HTTP://acme.example.org/directory"]],
    *[({"tls": "acme", "domain": "nb.example.org", "acme_directory": url}, "is not a URL like")
      for url in ["https://acme.example.org/dir ectory", "https://acme.example.org/directory\n",
                  "https://acme.example.org/directory\r\nX: y", "https://acme.example.org/directory\t",
                  " https://acme.example.org/directory", "https://acme.example.org/directory ",
                  "https://acme.example.org/dir?x=1", "https://acme.example.org/dir#x",
                  "https://user:pw@acme.example.org/dir", "https://acme.example.org:0/dir",
                  "https://acme.example.org:65536/dir", "https://acme.example.org/../dir",
                  "https://acme.example.org/%2e%2e/dir", "https://acme.example.org/dir;reboot",
                  "https://acme_example.org/dir", "https://acme.example.org./dir", "https://-acme.example.org/dir",
                  "https://[fe80::1%eth0]/dir", "https://[::1/dir", "https://01.2.3.4/dir", "https://local/dir",
                  "https://\u212aelvin.org/dir", "https://acme.example.org/d\u00efr", "https://", "ftp://x.org/dir",
                  "file:///etc/passwd", "acme.example.org/directory", ""]],
]


@pytest.mark.parametrize("values, message", ACME_REFUSED, ids=[repr(v) for v, _ in ACME_REFUSED])
def test_acme_settings_are_refused_in_one_line(values, message):
    with pytest.raises(ConfigError) as refused:
        config.load({"host": "192.0.2.1", **values}, env={})
    assert message in str(refused.value).replace("_", " ") and "\n" not in str(refused.value)


@pytest.mark.parametrize("given, kept", [
    ("https://acme-v02.api.letsencrypt.org/directory", None), ("https://127.0.0.1:14000/dir", None),
    ("https://ACME.Example.ORG/directory", "https://acme.example.org/directory"), ("https://[::1]:14000/dir", None),
    ("https://[0:0::1]:08443/dir", "https://[::1]:8443/dir"), ("https://ca.example.org", None),
    ("https://ca.example.org/acme/acme/directory", None), ("https://acme.zerossl.com/v2/DV90", None)])
def test_good_acme_directories_are_kept_normalised(given, kept):
    cfg = config.load({"host": "192.0.2.1", "domain": "nb.example.org", "tls": "acme", "acme_directory": given},
                      env={})
    assert cfg.acme_directory == (kept or given) == cfg.acme_directory_url


def test_acme_defaults_and_sources(tmp_path):
    cfg = config.load({"host": "192.0.2.1", "domain": "nb.example.org", "tls": "acme"}, env={})
    assert (cfg.acme_email, cfg.acme_directory_url) == (None, config.LETSENCRYPT)
    assert config.load({"host": "192.0.2.1"}, env={}).tls == "private"  # the private CA stays the default
    toml = tmp_path / "c.toml"
    toml.write_text('tls = "acme"\ndomain = "nb.example.org"\nacme-email = "Ops+Nb@Example.ORG"\n')
    cfg = config.load({"host": "192.0.2.1"}, env={"APPLIANCE_ACME_DIRECTORY": config.LETSENCRYPT_STAGING},
                      config_file=toml)
    assert (cfg.tls, cfg.acme_email, cfg.acme_directory) == ("acme", "Ops+Nb@example.org", config.LETSENCRYPT_STAGING)


def test_acme_ca_bundle_must_hold_certificates(tmp_path):
    key = tmp_path / "key.pem"
    key.write_bytes(tls._new_key(State(tmp_path / "s").ensure(), "k").private_bytes(
        tls.serialization.Encoding.PEM, tls.serialization.PrivateFormat.PKCS8, tls.serialization.NoEncryption()))
    flags = {"host": "192.0.2.1", "domain": "nb.example.org", "tls": "acme"}
    for bad, message in [(key, "holds no PEM certificate"), (tmp_path / "missing.pem", "is not a readable file"),
                         (tmp_path, "is not a readable file")]:
        with pytest.raises(ConfigError, match=message):
            config.load({**flags, "acme_ca_bundle": str(bad)}, env={})
    state = State(tmp_path / "t").ensure()
    tls.ensure(state, ("nb.example.org",), say=lambda _: None)
    bundle = tmp_path / "bundle.pem"  # a key in the same file is left behind: only certificates travel
    bundle.write_bytes(b"# a comment\n" + state.read("ca.crt") + key.read_bytes() + state.read("server.crt"))
    cfg = config.load({**flags, "acme_ca_bundle": str(bundle)}, env={})
    sent = config.read_ca_bundle(cfg.acme_ca_bundle)
    assert sent == state.read("ca.crt") + state.read("server.crt") and b"PRIVATE" not in sent


@pytest.fixture
def server(tmp_path):
    """A Target reaching this machine through a real sshd on a free loopback port (its own host key and
    authorized key, nothing of the machine's SSH setup used or changed)."""
    if not os.path.exists("/usr/sbin/sshd") or not os.path.isdir("/run/sshd") or os.geteuid() != 0:
        pytest.skip("needs root, OpenSSH's sshd and /run/sshd")
    for name in ("host_key", "id_ed25519"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)], check=True)
    (tmp_path / "authorized_keys").write_text((tmp_path / "id_ed25519.pub").read_text())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", "/dev/null", "-p", str(port),
                             "-h", str(tmp_path / "host_key"), "-o", "ListenAddress=127.0.0.1",
                             "-o", f"AuthorizedKeysFile={tmp_path / 'authorized_keys'}", "-o", "StrictModes=no",
                             "-o", "PermitRootLogin=prohibit-password", "-o", "UsePAM=no", "-o", "PidFile=none"],
                            stderr=subprocess.DEVNULL)
    control = tempfile.mkdtemp(prefix="ssh-")  # short: a socket path holds at most 107 bytes
    try:
        target = ssh.Target("127.0.0.1", port, "root", str(tmp_path / "id_ed25519"),
                            str(tmp_path / "known_hosts"), control)
        deadline = time.monotonic() + 10
        while target.ssh("true", capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "sshd did not answer"
            time.sleep(0.1)
        yield target
    finally:
        target.close()
        sshd.terminate()
        sshd.wait(10)
        shutil.rmtree(control, ignore_errors=True)


@pytest.mark.parametrize("user", ["www-data", "nobody", "root"])
def test_up_refuses_a_system_account_of_the_server(server, user):
    with pytest.raises(DeployError, match=f"'{user}' is a system account on 127.0.0.1 .uid [0-9]+.; choose"):
        ssh.refuse_system_account(server, user)


def test_up_refuses_a_system_account_only_the_server_has(server):
    """A package's system user (not in the built-in list) is found on the server itself; a new name passes."""
    entries = [line.split(":") for line in subprocess.run(["getent", "passwd"], capture_output=True, text=True)
               .stdout.splitlines()]
    extra = [f[0] for f in entries if int(f[2]) < 1000 and f[0] not in config.SYSTEM_USERS
             and config._USER.fullmatch(f[0])]
    if not extra:
        pytest.skip("this machine has no system account outside the built-in list")
    with pytest.raises(DeployError, match=f"'{extra[0]}' is a system account"):
        ssh.refuse_system_account(server, extra[0])
    assert ssh.refuse_system_account(server, "nosuchuser13") is None  # a new name: up creates it
