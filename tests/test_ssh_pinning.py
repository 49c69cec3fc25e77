"""--ssh-host-key-fingerprint against a real sshd: a throwaway one on 127.0.0.1 with its own host keys
(this machine's /etc/ssh is not used), logging in with a test key from a temporary authorized_keys."""
import os
import shutil
import socket
import subprocess
import time

import pytest

from appliance import config, ssh
from appliance.errors import ConfigError, DeployError
from appliance.state import State

SSHD = "/usr/sbin/sshd"
pytestmark = pytest.mark.skipif(not (os.path.exists(SSHD) and os.geteuid() == 0 and shutil.which("ssh-keyscan")),
                                reason="needs root and openssh-server (tests/run.py installs it)")


def _keygen(path, kind):
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "", "-f", str(path)], check=True)
    return path


def _fingerprint(pub):
    """The fingerprint as OpenSSH's own ssh-keygen prints it."""
    return subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)], capture_output=True, text=True,
                          check=True).stdout.split()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    d = tmp_path_factory.mktemp("sshd")
    ed25519, ecdsa = _keygen(d / "host_ed25519", "ed25519"), _keygen(d / "host_ecdsa", "ecdsa")
    client = _keygen(d / "client", "ed25519")
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (d / "sshd_config").write_text(f"ListenAddress 127.0.0.1\nHostKey {ed25519}\nHostKey {ecdsa}\n"
                                   f"PidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\n"
                                   "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                                   "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config"), "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
        time.sleep(0.05)
    yield {"port": port, "key": str(client), "ed25519": _fingerprint(f"{ed25519}.pub"),
           "ecdsa": _fingerprint(f"{ecdsa}.pub"), "other": _fingerprint(_keygen(d / "other", "ed25519"))}
    proc.terminate()
    proc.wait(timeout=10)


def _cfg(tmp_path, sshd, fingerprint):
    cfg = config.load({"host": "127.0.0.1", "ssh_port": sshd["port"], "ssh_key": sshd["key"],
                       "state_dir": str(tmp_path), "ssh_host_key_fingerprint": fingerprint}, env={})
    return cfg, State(cfg.target_dir).ensure()


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa"])  # ecdsa: not the key type ssh asks for first
def test_right_fingerprint_pins_and_connects(tmp_path, sshd, kind):
    cfg, state = _cfg(tmp_path, sshd, sshd[kind])
    with ssh.connect(cfg, state) as (target, _, _):
        assert "StrictHostKeyChecking=yes" in target.ssh_options()
        r = target.ssh("echo pinned", capture_output=True, text=True, stdin=subprocess.DEVNULL)
        assert r.stdout == "pinned\n", r.stderr
    lines = state.read("known_hosts").decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"[127.0.0.1]:{sshd['port']} ")
    assert ssh.pinned_host_keys(state) == [f"{'ssh-ed25519' if kind == 'ed25519' else 'ecdsa-sha2-nistp256'} "
                                           f"{sshd[kind]}"]
    with ssh.connect(cfg, state) as (target, _, _):  # a later run: the pin holds, nothing is added
        pass
    assert state.read("known_hosts").decode().splitlines() == lines


def test_wrong_fingerprint_is_refused_and_nothing_kept(tmp_path, sshd):
    cfg, state = _cfg(tmp_path, sshd, sshd["other"])
    with pytest.raises(DeployError) as refused:
        with ssh.connect(cfg, state):
            pass
    message = str(refused.value)
    assert "\n" not in message and sshd["other"] in message and sshd["ed25519"] in message, message
    assert not state.known_hosts.exists()


def test_kept_keys_must_include_the_given_fingerprint(tmp_path, sshd):
    cfg, state = _cfg(tmp_path, sshd, sshd["ed25519"])
    with ssh.connect(cfg, state):
        pass
    pinned = state.read("known_hosts")
    cfg, state = _cfg(tmp_path, sshd, sshd["ecdsa"])  # another key of the same server, not the kept one
    with pytest.raises(DeployError, match="pins .* not the given"):
        with ssh.connect(cfg, state):
            pass
    assert state.read("known_hosts") == pinned


def test_without_the_flag_the_first_key_is_kept(tmp_path, sshd):
    cfg, state = _cfg(tmp_path, sshd, None)
    with ssh.connect(cfg, state) as (target, _, _):
        assert "StrictHostKeyChecking=accept-new" in target.ssh_options()
    assert len(ssh.pinned_host_keys(state)) >= 1


def test_fingerprint_matches_ssh_keygen(tmp_path):
    pub = _keygen(tmp_path / "k", "ecdsa").with_suffix(".pub")
    assert ssh.host_key_fingerprint(pub.read_text().split()[1]) == _fingerprint(pub)


@pytest.mark.parametrize("value", ["SHA256:" + "A" * 42, "SHA256:" + "A" * 44, "sha256:" + "A" * 43,
                                   "SHA256:" + "A" * 43 + "\n", "SHA256:" + "A" * 42 + "=", "MD5:" + "A" * 43,
                                   " SHA256:" + "A" * 43, "SHA256:" + "A" * 42 + "-"])
def test_malformed_fingerprint_refused(value):
    with pytest.raises(ConfigError, match="fingerprint"):
        config.load({"host": "192.0.2.1", "ssh_host_key_fingerprint": value}, env={})
