"""The Dask cluster's operator side: its CA and certificates, what each server's role gets, the worker settings."""
import ssl

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from appliance import cluster, config, layout
from appliance.errors import ConfigError
from appliance.state import State

WORKERS = [{"name": "local-1", "address": "172.17.0.3"}, {"name": "local-2", "address": "172.17.0.4"}]


@pytest.fixture
def state(tmp_path):
    return State(tmp_path / "local").ensure()


def test_each_component_has_its_own_certificate_from_the_clusters_ca(state, tmp_path):
    ca, scheduler, key = cluster.certificate(state, "scheduler")
    _, worker, _ = cluster.certificate(state, "worker-local-1")
    assert scheduler != worker
    ca_cert = x509.load_pem_x509_certificate(ca.encode())
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for pem in (scheduler, worker):
        cert = x509.load_pem_x509_certificate(pem.encode())
        assert cert.issuer == ca_cert.subject
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    # the chain verifies the way Dask's TLS contexts check it (CA file, no host name)
    (tmp_path / "ca.pem").write_text(ca)
    (tmp_path / "s.pem").write_text(scheduler + key)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tmp_path / "ca.pem"))
    server.load_cert_chain(str(tmp_path / "s.pem"))
    assert (state.path / "dask-ca.key").stat().st_mode & 0o077 == 0
    assert (state.path / "dask-scheduler.key").stat().st_mode & 0o077 == 0


def test_certificates_are_kept_and_a_new_ca_reissues_them(state):
    first = cluster.certificate(state, "client")
    assert cluster.certificate(state, "client") == first  # nothing changes on the next up
    (state.path / "dask-ca.crt").unlink()
    again = cluster.certificate(state, "client")
    assert again[0] != first[0] and again[1] != first[1]


def test_the_scheduler_and_the_notebook(state):
    v = cluster.appliance_vars(state, WORKERS, "172.17.0.2")
    assert v["dask_mode"] == "scheduler" and v["dask_peers"] == ["172.17.0.3", "172.17.0.4"]
    assert v["dask_ports"] == [layout.DASK_SCHEDULER_PORT]
    assert v["jupyter_dask_env"]["DASK_SCHEDULER_ADDRESS"] == "tls://172.17.0.2:8786"
    assert v["jupyter_dask_env"]["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
    assert v["jupyter_dask_mounts"] == [{"type": "bind", "source": layout.DASK_CLIENT_DIR, "target": "/etc/dask",
                                         "read_only": True}]
    keys = [f for f in v["dask_files"] if f["path"].endswith(".key")]
    assert [f["path"] for f in keys] == [f"{layout.DASK_TLS_DIR}/scheduler.key", f"{layout.DASK_CLIENT_DIR}/client.key"]
    assert all(f["secret"] and f["mode"] == "0640" and f["group"] == layout.NOTEBOOK_ACCOUNT for f in keys)
    assert "127.0.0.1:8787" in v["dask_command"] and "distributed.http.proxy" not in v["dask_env"][
        "DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES"]
    none = cluster.appliance_vars(state, [], "")
    assert none["dask_mode"] == "none" and none["jupyter_dask_env"] == {} and none["dask_files"] == []


def test_a_worker(state):
    v = cluster.worker_vars(state, WORKERS[0], WORKERS, "172.17.0.2", "1g")
    assert v["dask_peers"] == ["172.17.0.2", "172.17.0.4"]  # the scheduler's server and the other worker
    assert v["dask_ports"] == [layout.DASK_WORKER_PORT, layout.DASK_NANNY_PORT]
    command = v["dask_command"]
    assert command[:3] == ["dask", "worker", "tls://172.17.0.2:8786"]
    assert command[command.index("--contact-address") + 1] == "tls://172.17.0.3:8788"
    assert command[command.index("--memory-limit") + 1] == "1g"
    assert "auto" in cluster.worker_vars(state, WORKERS[0], WORKERS, "172.17.0.2", "0")["dask_command"]


@pytest.mark.parametrize("settings, message", [
    ({"workers": 2, "host": "203.0.113.10"}, "--workers makes local worker droplets"),
    ({"worker_hosts": "203.0.113.11"}, "--worker-host needs --host"),
    ({"host": "203.0.113.10", "worker_hosts": "203.0.113.11,203.0.113.11"}, "each worker once"),
    ({"host": "203.0.113.10", "worker_hosts": "203.0.113.10"}, "each worker once"),
    ({"host": "203.0.113.10", "worker_hosts": "bad host!"}, "not a valid DNS name"),
    ({"workers": 99}, "is not from 0 to"),
    ({"worker_memory": "lots"}, "worker memory 'lots'"),
])
def test_bad_worker_settings_are_one_line(settings, message):
    with pytest.raises(ConfigError, match=message):
        config.load(settings, env={})


def test_workers_are_remembered_unless_asked_otherwise():
    assert config.load({"workers": 2}, env={}).worker_list() == ("local-1", "local-2")
    assert config.load({}, env={}).worker_list(["local-1"]) == ("local-1",)  # as the last up had them
    assert config.load({"workers": 0}, env={}).worker_list(["local-1"]) == ()
    remote = config.load({"host": "203.0.113.10", "worker_hosts": "w1.example.org"}, env={})
    assert remote.worker_list(["old.example.org"]) == ("w1.example.org",)
    assert config.load({"host": "203.0.113.10"}, env={}).worker_list(["w1.example.org"]) == ("w1.example.org",)
