"""Hostile and broken input: each case is one clear line on stderr, a non-zero exit, no traceback."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from appliance import droplet
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


CASES = [  # (name, argv after provision.py, extra env, expected text in the error)
    ("domain with ;", ["render", "--host", "192.0.2.1", "--domain", "x.com; return 301 http://evil"], {},
     "not a valid DNS name"),
    ("domain with {", ["render", "--host", "192.0.2.1", "--domain", "a{b}.com"], {}, "not a valid DNS name"),
    ("domain with newline", ["render", "--host", "192.0.2.1", "--domain", "x.com\nlisten 81;"], {},
     "not a valid DNS name"),
    ("domain with space", ["render", "--host", "192.0.2.1", "--domain", "x .com"], {}, "not a valid DNS name"),
    ("user with :", ["render", "--host", "192.0.2.1", "--user", "a:b"], {}, "contains ':'"),
    ("user with /", ["render", "--host", "192.0.2.1", "--user", "a/b"], {}, "not a valid Linux user name"),
    ("user with newline", ["render", "--host", "192.0.2.1", "--user", "a\nb"], {}, "control character"),
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
                                  .with_name("b2.tar.gz"))}
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
