"""The control socket for real: peer credentials, the group rule, the audit log, status and keys.

Unprivileged clients are this test process forked and switched to `nobody` (uid 65534) with or
without the control group in its group list, so the kernel reports their real uid to the server.
"""

import json
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from appliance.control.client import ControlClient, ControlError, ServiceUnreachable
from tests.appliance.conftest import make_config, start_server

NOBODY = 65534
GROUP = "users"  # present on Debian/Ubuntu; stands in for the `appliance` group

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")


@pytest.fixture(scope="module")
def control(tiny_model_path, tmp_path_factory):
    # The socket's folder must be reachable by `nobody` (pytest's tmp folders are 0700).
    socket_dir = Path(tempfile.mkdtemp(prefix="appliance-control-"))
    socket_dir.chmod(0o755)
    state = tmp_path_factory.mktemp("control-state")
    server = start_server(make_config(tiny_model_path, state, control_socket=socket_dir / "control.sock",
                                      control_group=GROUP))
    yield server
    server.stop()
    shutil.rmtree(socket_dir)


def client_for(server) -> ControlClient:
    return ControlClient(server.app.config.control_socket)


def as_user(server, action, groups: list[int]) -> dict:
    """Run action(client) in a child process with uid/gid nobody and these supplementary groups."""
    client = client_for(server)  # connects lazily: the child's uid is what the server sees
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            os.setgroups(groups)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                result = {"ok": action(client)}
            except ControlError as e:
                result = {"error": type(e).__name__, "message": e.message, "status": e.status}
            os.write(write, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def group_id() -> int:
    import grp

    return grp.getgrnam(GROUP).gr_gid


def test_socket_is_0660_and_owned_by_the_control_group(control):
    info = control.app.config.control_socket.stat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert info.st_gid == group_id()


def test_root_gets_in_and_every_change_is_audited_with_uid_and_user(control):
    with client_for(control) as client:
        created = client.create_key("audited", rpm_limit=5)
        client.update_key(created["key"]["id"], rpm_limit=7)
        client.revoke_key(created["key"]["id"])
        entries = client.audit()
    mine = [e for e in entries if e["target"] == created["key"]["id"]]
    assert [e["action"] for e in mine] == ["key.create", "key.update", "key.revoke"]
    assert all(e["uid"] == 0 and e["user"] == "root" for e in mine)
    log = control.app.config.state_dir / "audit.log"
    assert stat.S_IMODE(log.stat().st_mode) == 0o640
    assert created["key"]["id"] in log.read_text()


def test_non_member_cannot_open_the_socket_and_is_told_to_join_the_group(control):
    result = as_user(control, lambda c: c.status(), groups=[])
    assert result["error"] == "AccessRefused"
    assert "add yourself to the appliance group" in result["message"]


def test_non_member_is_refused_by_the_server_even_if_the_mode_is_loosened(control):
    path = control.app.config.control_socket
    path.chmod(0o666)
    try:
        result = as_user(control, lambda c: c.create_key("sneaky"), groups=[])
    finally:
        path.chmod(0o660)
    assert result == {"error": "AccessRefused", "status": 403, "message": result["message"]}
    assert f"uid {NOBODY}" in result["message"] and f"in the {GROUP} group" in result["message"]
    with client_for(control) as client:
        assert "sneaky" not in [k["name"] for k in client.keys()]


def test_group_member_gets_in_and_is_audited_as_itself(control):
    result = as_user(control, lambda c: c.create_key("from-member")["key"]["id"], groups=[group_id()])
    key_id = result["ok"]
    with client_for(control) as client:
        [entry] = [e for e in client.audit() if e["target"] == key_id]
    assert entry["uid"] == NOBODY and entry["user"] == "nobody" and entry["action"] == "key.create"


def test_missing_socket_asks_whether_the_service_runs(tmp_path):
    with ControlClient(tmp_path / "nothing.sock") as client, pytest.raises(ServiceUnreachable) as caught:
        client.status()
    assert "is the service running?" in caught.value.message


def test_keys_lifecycle_over_the_socket_changes_what_the_api_accepts(control):
    with client_for(control) as client:
        created = client.create_key("lifecycle", tpm_limit=1000, allowed_models=[control.model])
        key_id, secret = created["key"]["id"], created["api_key"]
        assert secret.startswith(f"sk-app-{key_id}-")
        listed = {k["id"]: k for k in client.keys()}[key_id]
        assert "api_key" not in listed and listed["tpm_limit"] == 1000 and listed["status"] == "active"
        assert listed["usage_today"] == {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
        with pytest.raises(ControlError) as bad:
            client.update_key(key_id, rpm_limit=-1)
        assert bad.value.status == 400 and "rpm_limit" in bad.value.message
        assert client.update_key(key_id, rpm_limit=100)["rpm_limit"] == 100
        with pytest.raises(ControlError) as bad_network:
            client.update_key(key_id, allowed_networks=["the office"])
        assert bad_network.value.status == 400 and "allowed_networks: 'the office'" in bad_network.value.message
        assert client.update_key(key_id, allowed_networks=["198.51.100.0/24"])["allowed_networks"] == ["198.51.100.0/24"]
        elsewhere = httpx.get(control.base_url + "/v1/models", headers={"Authorization": f"Bearer {secret}"})
        assert elsewhere.status_code == 403 and elsewhere.json()["error"]["code"] == "network_not_allowed"
        assert client.update_key(key_id, allowed_networks=None)["allowed_networks"] is None
        public = httpx.post(control.base_url + "/v1/completions", headers={"Authorization": f"Bearer {secret}"},
                            json={"model": control.model, "prompt": "Hi", "max_tokens": 2}, timeout=30)
        assert public.status_code == 200
        client.revoke_key(key_id)
        assert {k["id"]: k for k in client.keys()}[key_id]["status"] == "revoked"
        with pytest.raises(ControlError) as missing:
            client.revoke_key("00000000")
        assert missing.value.status == 404
    refused = httpx.post(control.base_url + "/v1/completions", headers={"Authorization": f"Bearer {secret}"},
                         json={"model": control.model, "prompt": "Hi", "max_tokens": 2}, timeout=30)
    assert refused.status_code == 403


def test_status_and_events_show_requests_running(control):
    with client_for(control) as client:
        secret = client.create_key("load")["api_key"]
        status = client.status()
        before = status["engine"]
        assert status["listeners"]["http"] == control.base_url and status["listeners"]["https"] is None
        assert before["model"] == control.model and before["kv_blocks_total"] > 0
        for _ in range(3):
            httpx.post(control.base_url + "/v1/completions", headers={"Authorization": f"Bearer {secret}"},
                       json={"model": control.model, "prompt": "Tell me", "max_tokens": 16}, timeout=30).raise_for_status()
        deadline = time.monotonic() + 5
        seen = None
        for event, data in client.events():
            if event == "snapshot" and data["engine"]["requests_total"] >= before["requests_total"] + 3:
                seen = data
                break
            assert time.monotonic() < deadline, "no snapshot counted the requests"
        history = client.history(seconds=60)
    engine = seen["engine"]
    assert engine["generation_tokens_total"] >= before["generation_tokens_total"] + 48
    assert engine["ttft_s"]["p50"] is not None and engine["itl_s"]["p99"] is not None
    assert seen["host"]["memory_total_bytes"] > 0 and "no NVIDIA GPU" in seen["gpu_status"]
    assert len(history) >= 1 and history[-1]["time"] <= time.time()


def test_an_event_stream_ends_when_interrupted_from_another_thread(control):
    """The service sends a snapshot every second, forever: only interrupt_events() ends this read."""
    import threading

    first, ended = threading.Event(), threading.Event()
    with client_for(control) as client:

        def read():
            try:
                for _ in client.events():
                    first.set()
            except ServiceUnreachable:
                pass  # the stream was cut mid-read
            ended.set()

        threading.Thread(target=read, daemon=True).start()
        assert first.wait(10), "no first event"
        client.interrupt_events()
        assert ended.wait(10), "the stream did not end"
        assert client.status()["engine"]["model"] == control.model  # the client still works


def test_bad_requests_get_clear_errors(control):
    with client_for(control) as client:
        with pytest.raises(ControlError) as no_name:
            client.request("POST", "/v1/keys", {"rpm_limit": 5})
        assert no_name.value.status == 400 and "name is required" in no_name.value.message
        with pytest.raises(ControlError) as bad_time:
            client.create_key("x", expires_at="next tuesday")
        assert "ISO-8601" in bad_time.value.message
        with pytest.raises(ControlError) as bad_limit:
            client.logs(limit=0)
        assert "limit must be between" in bad_limit.value.message


def test_a_box_with_its_own_keys_db_may_not_join_a_fleet_and_has_nothing_to_leave(control):
    with client_for(control) as client:
        status = client.fleet()
        assert status == {"membership": None, "leaving": False, "gateway": None}
        with pytest.raises(ControlError) as e:
            client.fleet_join("http://127.0.0.1:9", "admin", "http://127.0.0.1:8000")
        assert e.value.status == 400 and "keys_database_url" in e.value.message
        with pytest.raises(ControlError) as e:
            client.request("POST", "/v1/fleet/join", {"gateway_url": "http://g", "admin_key": "k", "worker_url": "http://w",
                                                      "timeout_s": "soon"})
        assert e.value.status == 400 and "timeout_s" in e.value.message
        with pytest.raises(ControlError) as e:
            client.fleet_leave()
        assert e.value.status == 409 and "not in a fleet" in e.value.message
