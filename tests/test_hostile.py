"""Hostile and broken input: each case is one clear line on stderr, a non-zero exit, no traceback."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from appliance import cli, droplet
from appliance.errors import DeployError

ROOT = Path(__file__).resolve().parent.parent


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def write(path, text):
    path.write_text(text)
    return str(path)


def link(path, target):
    target.write_text("the user's file")
    path.symlink_to(target)
    return str(path)


ZONE_PAYLOAD = "::1%x;satisfy any;allow all;#"  # passed validation before issue 13: Jupyter with no login
CASES = [  # (name, argv after provision.py, extra env, expected text in the error)
    ("domain with ;", ["render", "--host", "192.0.2.1", "--domain", "x.com; return 301 http://evil"], {},
     "not a valid DNS name"),
    ("domain with {", ["render", "--host", "192.0.2.1", "--domain", "a{b}.com"], {}, "not a valid DNS name"),
    ("domain with newline", ["render", "--host", "192.0.2.1", "--domain", "x.com\nlisten 81;"], {},
     "not a valid DNS name"),
    ("domain with space", ["render", "--host", "192.0.2.1", "--domain", "x .com"], {}, "not a valid DNS name"),
    ("user with :", ["render", "--host", "192.0.2.1", "--user", "a:b"], {}, "not a valid Linux user name"),
    ("user with /", ["render", "--host", "192.0.2.1", "--user", "a/b"], {}, "not a valid Linux user name"),
    ("user with newline", ["render", "--host", "192.0.2.1", "--user", "a\nb"], {}, "not a valid Linux user name"),
    ("user root", ["render", "--host", "192.0.2.1", "--user", "root"], {}, "is a system account"),
    ("host: IPv6 zone id carrying nginx text", ["render", "--host", ZONE_PAYLOAD], {}, "without zone id"),
    ("host: the same in the config file", ["render", "--config", "{zone_toml}"], {}, "without zone id"),
    ("host: the same in APPLIANCE_HOST", ["render"], {"APPLIANCE_HOST": ZONE_PAYLOAD}, "without zone id"),
    ("host: trailing newline", ["render", "--host", "1.2.3.4\n"], {}, "not a valid DNS name"),
    ("host: trailing newline in APPLIANCE_HOST", ["render"], {"APPLIANCE_HOST": "example.com\n"},
     "not a valid DNS name"),
    ("user over 32 chars", ["render", "--host", "192.0.2.1", "--user", "u" * 33], {}, "at most 32"),
    ("password with newline", ["render", "--host", "192.0.2.1", "--password-file", "{pw_newline}"], {},
     "line break"),
    ("empty password", ["render", "--host", "192.0.2.1"], {"APPLIANCE_PASSWORD": ""}, "is empty"),
    ("host with shell text", ["render", "--host", "1.2.3.4;reboot"], {}, "not a valid DNS name"),
    ("host refusing SSH", ["up", "--host", "127.0.0.1", "--ssh-port", "{closed}", "--ssh-key", "{key}"], {},
     "refuses SSH connections"),
    ("missing SSH key file", ["up", "--host", "127.0.0.1", "--ssh-key", "/nonexistent/key"], {},
     "is not a readable file"),
    ("not an SSH key", ["up", "--host", "127.0.0.1", "--ssh-key", "{not_a_key}"], {}, "cannot read the SSH key"),
    ("Docker engine not running", ["build"], {"DOCKER_HOST": "unix:///nonexistent/docker.sock"},
     "no Docker engine answers"),
    ("image that does not exist", ["build", "--image", "nope"], {}, "unknown image"),
    ("manifest of an image never built", ["images", "--image", "nope:never"], {}, "is not built here"),
    ("package with shell text", ["build", "--package", "numpy; rm -rf /"], {}, "package requirement"),
    ("corrupt certificate in the state", ["render", "--host", "192.0.2.1"], {}, "is not a PEM certificate"),
    ("unknown flag", ["up", "--bogus"], {}, "unrecognized arguments"),
    ("unknown command", ["explode"], {}, "invalid choice"),
    ("config file with a wrong type", ["render", "--host", "192.0.2.1", "--config", "{bad_config}"], {},
     "ssh_port must be an integer"),
    ("config file that is not TOML", ["render", "--config", "{not_toml}"], {}, "not valid TOML"),
    ("restore of a missing archive", ["restore", "/nonexistent/backup.tar.gz"], {}, "cannot read"),
    ("restore of a file that is not a backup", ["restore", "{not_a_key}"], {}, "damaged or not a backup"),
    ("backup into a directory", ["backup", "--out", "/tmp"], {}, "is a directory"),
    ("backup through a symlink", ["backup", "--out", "{link}", "--host", "127.0.0.1", "--ssh-port", "{closed}",
                                  "--ssh-key", "{key}"], {}, "is a symbolic link"),
    ("backup whose .partial is a symlink", ["backup", "--out", "{partial_link}", "--host", "127.0.0.1",
                                            "--ssh-port", "{closed}", "--ssh-key", "{key}"], {}, "is a symbolic link"),
    ("rebuild with a package with shell text", ["rebuild", "--host", "127.0.0.1", "--package", "x==1 && reboot"],
     {}, "package requirement"),
    ("status of a host refusing SSH", ["status", "--host", "127.0.0.1", "--ssh-port", "{closed}", "--ssh-key",
                                       "{key}"], {}, "refuses SSH connections"),
    ("port out of range", ["up", "--host", "127.0.0.1", "--ssh-port", "70000"], {}, "not a port number"),
    ("--tls acme without --domain", ["up", "--host", "127.0.0.1", "--tls", "acme"], {}, "tls acme needs --domain"),
    ("--tls acme without --domain, in the environment", ["render", "--host", "192.0.2.1"],
     {"APPLIANCE_TLS": "acme"}, "tls acme needs --domain"),
    ("ACME directory over plain HTTP", ["up", "--host", "127.0.0.1", "--domain", "nb.example.org", "--tls", "acme",
                                        "--acme-directory", "http://acme.example.org/directory"], {},
     "is not an https:// URL"),
    ("ACME directory with a space", ["render", "--host", "192.0.2.1", "--domain", "nb.example.org", "--tls", "acme",
                                     "--acme-directory", "https://acme.example.org/dir ectory"], {},
     "is not a URL like"),
    ("ACME directory with a newline", ["render", "--host", "192.0.2.1", "--domain", "nb.example.org", "--tls",
                                       "acme", "--acme-directory", "https://acme.example.org/dir\nExecStart=x"], {},
     "is not a URL like"),
    ("ACME e-mail without a domain", ["render", "--host", "192.0.2.1", "--domain", "nb.example.org", "--tls", "acme",
                                      "--acme-email", "root"], {}, "is not an e-mail address"),
    ("ACME CA bundle that is not PEM", ["render", "--host", "192.0.2.1", "--domain", "nb.example.org", "--tls",
                                        "acme", "--acme-ca-bundle", "{not_a_key}"], {}, "holds no PEM certificate"),
    ("ACME setting without --tls acme", ["render", "--host", "192.0.2.1", "--acme-email", "me@example.org"], {},
     "only used with --tls acme"),
    ("unknown --tls", ["render", "--host", "192.0.2.1", "--tls", "letsencrypt"], {}, "invalid choice"),
]


@pytest.mark.parametrize("name, argv, env, expected", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_one_clear_line(name, argv, env, expected, tmp_path, request):
    if argv[0] == "images":  # the image really is missing from a running engine
        request.getfixturevalue("docker_client")
    state = tmp_path / "state"
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    if name == "corrupt certificate in the state":
        (state / "192.0.2.1").mkdir(parents=True)
        (state / "192.0.2.1" / "server.crt").write_text("garbage")
    values = {"pw_newline": write(tmp_path / "pw", "two\nlines of password\n"), "closed": str(closed_port()),
              "key": str(key), "not_a_key": write(tmp_path / "nokey", "hello"),
              "bad_config": write(tmp_path / "bad.toml", 'ssh_port = "twenty-two"\n'),
              "not_toml": write(tmp_path / "x.toml", "host = \n"),
              "link": link(tmp_path / "backup.tar.gz", tmp_path / "victim"),
              "partial_link": str(Path(link(tmp_path / "b2.tar.gz.partial", tmp_path / "victim"))
                                  .with_name("b2.tar.gz")),
              "zone_toml": write(tmp_path / "zone.toml", f"host = {json.dumps(ZONE_PAYLOAD)}\n")}
    argv = [a.format(**values) if a.startswith("{") else a for a in argv]
    if argv[0] in ("render", "up", "rebuild", "status"):
        argv += ["--state-dir", str(state)]
    if argv[0] == "render":
        argv += ["--out", str(tmp_path / "out")]
    r = subprocess.run([sys.executable, str(ROOT / "provision.py"), *argv], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(tmp_path),
                            "APPLIANCE_PASSWORD": "a good long password",
                            **{k: v for k, v in os.environ.items() if k == "APPLIANCE_NO_VENV"}, **env},
                       stdin=subprocess.DEVNULL, timeout=120)
    print(name, "->", r.returncode, r.stderr.strip())
    assert r.returncode != 0
    assert "Traceback" not in r.stderr + r.stdout
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and expected in errors[0], r.stderr
    assert not (tmp_path / "out").exists()  # nothing half-written
    if (tmp_path / "victim").exists():
        assert (tmp_path / "victim").read_text() == "the user's file"


def test_taken_port_for_the_local_droplet(monkeypatch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setattr(droplet, "PORTS", {22: port})
        with pytest.raises(DeployError, match=f"127.0.0.1:{port} .* is already taken"):
            droplet._check_ports()


# Every value that reaches a file on the server or Ansible, with the forms a regex writer forgets. Each is
# refused with one `error:` line naming the field, exit code 2, and nothing rendered, from every source
# the value can come from. Upper case: DNS names are lowered (DNS ignores case), everything else refuses it.
LONG = ".".join(["a" * 63] * 3 + ["a" * 62])  # 254 characters
HOSTILE = {
    "host": [ZONE_PAYLOAD, "fe80::1%eth0", "::1%25", "[::1]", "[::1]:22", "::1/128", "1.2.3.4\n", "1.2.3.4\r",
             "1.2.3.4\t", "1.2.3.4 ", " 1.2.3.4", "1.2.3.4\0", "1.2.3.4/24", "1.2.3", "01.2.3.4", "256.1.1.1",
             "1.2.3.4.5", "127.1", "0x7f.0.0.1", "\u0661.\u0662.\u0663.\u0664", "example.com\n", "EXAMPLE.COM\n",
             "example.com\r", "exa\0mple.com", "exa mple.com", "example.com.", "example..com", ".example.com", "..",
             "-example.com", "example-.com", "ex_ample.com", "a" * 64 + ".com", LONG, "exam$ple.com",
             "`reboot`.com", "a;b.com", "a{b}.com", "a}b.com", "a#b.com", "'a'.com", '"a".com',
             "ex\u0430mple.com", "example\uff0ecom", "example\u3002com", "\u212aelvin.com", "\u00e9vil.com",
             "example.com:22", "root@example.com", "-oProxyCommand=x", ""],
    "domain": ["x.com; return 301 http://evil", "x.com\n", "x.com\r", "x\0.com", "x\t.com", "-x.com", "x-.com",
               "x..com", "x.com.", "*.example.com", "a_b.com", "a" * 64 + ".com", LONG, "\u00e9vil.com",
               "ex\u0430mple.com", "example\uff0ecom", "x$.com", "x`.com", "x{.com", "x#.com", "'x'.com",
               "192.0.2.1", "fe80::1", ""],
    "user": ["root", "www-data", "nobody", "sshd", "daemon", "bin", "sys", "_apt", "backup", "systemd-network",
             "messagebus", "ds\n", "ds\r", "d\0s", "d\ts", "d s", "-ds", "Ds", "DS", "ds$", "d$s", "d;s", "d`s`",
             "d{s}", "d#s", "d's", 'd"s', "d\u017f", "d\u0455", "\uff44s", "1ds", "u" * 33, "a:b", "a/b", "..", ""],
    "ssh_user": ["-oProxyCommand=x", "root\n", "a b", "r@h", ""],
    "timezone": ["UTC\n", "UTC\r", "UTC\0", "UTC ", "Europe/../../etc/passwd", "../etc/passwd", "/etc/localtime",
                 "Europe//Paris", "Europe/Paris/", "-UTC", "UTC;reboot", "$TZ", "`date`", "Europe/Par\u0131s",
                 "Europe\uff0fParis", "Etc/GMT+5\n", "{{ x }}", ""],
    "memory": ["4g\n", "4G\r", "-1", "4gb", "4 g", "4g;", "0x10", "\uff14g", "4.5g", "00", "04g", "4", "1e9", ""],
    "cpus": ["nan", "inf", "-inf", "-1", "1e9", "1;2", "2\0"],
    "swap_mb": ["-1", "99999999", "1.5", "0x10", "2048\0"],
    "image": ["scipy\n", "../scipy", "sci py", "-scipy", "Scipy", "a..b", "scipy;ls", "\u0455cipy", ""],
    "ssh_port": ["0", "70000", "-22", "22;", "0x16"],
    "tls": ["ACME", "acme\n", "acme;", " acme", "letsencrypt", "private\0", ""],
    "acme_email": ["me", "me@example", "me@example.org\n", "me@example.org\r", "me @example.org", "me@example.org;",
                   "me@example.org,you@example.org", "<me@example.org>", "me..you@example.org", ".me@example.org",
                   "m\u00e9@example.org", "me@ex\u0430mple.org", "me@[192.0.2.1]", "me\0@example.org", "$(id)@x.org",
                   "`id`@example.org", '"me"@example.org', "me@example.org -m x@y.org", "--email", ""],
    "acme_directory": ["http://acme.example.org/directory", "https://acme.example.org/dir ectory",
                       "https://acme.example.org/directory\n", "https://acme.example.org/directory\r",
                       "https://acme.example.org/d\0", "https://acme.example.org/dir?x=1",
                       "https://acme.example.org/dir#x", "https://u:p@acme.example.org/dir",
                       "https://acme.example.org:0/dir", "https://acme.example.org:70000/dir",
                       "https://acme.example.org/../etc", "https://acme.example.org/%2e%2e", "https://a;b.org/dir",
                       "https://acme.example.org/dir;reboot", "https://\u212aelvin.org/dir", "https://[fe80::1%eth0]/d",
                       "https://acme.example.org./dir", "file:///etc/passwd", "acme.example.org/directory",
                       "https://", ""],
}
FLAGS = ("host", "domain", "user", "ssh_user", "image", "ssh_port", "tls", "acme_email",
         "acme_directory")  # those with a flag on `render`/`up`


def _sources(field, value):
    yield "toml"
    if field in FLAGS:
        yield "flag"
    if value and "\0" not in value:  # the environment cannot hold NUL; an empty variable means unset
        yield "env"


TABLE = [(field, value, source) for field, values in HOSTILE.items() for value in values
         for source in _sources(field, value)]


@pytest.mark.parametrize("field, value, source", TABLE, ids=[f"{f}-{s}-{v!r}" for f, v, s in TABLE])
def test_hostile_value_is_refused_before_anything_is_written(field, value, source, tmp_path, monkeypatch, capsys):
    for key in [k for k in os.environ if k.startswith("APPLIANCE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("APPLIANCE_PASSWORD", "a good long password")
    monkeypatch.setenv("HOME", str(tmp_path))
    command = "up" if field in ("ssh_user", "image", "ssh_port") else "render"  # up stops at the config
    argv = [command, "--state-dir", str(tmp_path / "state")]
    if command == "render":
        argv += ["--out", str(tmp_path / "out")]
    if field != "host":
        argv += ["--host", "192.0.2.1"]
    if field.startswith("acme_"):  # refused by its own grammar, not for want of --tls acme
        argv += ["--tls", "acme", "--domain", "nb.example.org"]
    if source == "flag":
        argv.append(f"--{field.replace('_', '-')}={value}")
    elif source == "env":
        monkeypatch.setenv(f"APPLIANCE_{field.upper()}", value)
    else:
        argv += ["--config", write(tmp_path / "c.toml", f"{field} = {json.dumps(value)}\n")]
    try:
        code = cli.run(argv)
    except SystemExit as exc:  # argparse's own refusal of a flag's type: usage, then one error line
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and "error: " in errors[0], err
    said = errors[0].replace("_", " ").replace("-", " ")
    assert field.replace("_", " ") in said or "user name" in said, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "state").exists()  # nothing written
