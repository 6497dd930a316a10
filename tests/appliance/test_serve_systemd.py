"""systemd glue: sd_notify READY/STATUS/STOPPING, and WATCHDOG=1 only while the engine loop advances."""

import socket
import threading
import time

import httpx
import pytest

from appliance.ops import sdnotify
from tests.appliance.conftest import make_config, start_server


class NotifyListener:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop:
            try:
                message = self.sock.recv(4096).decode()
                self.messages.append((time.monotonic(), message))
            except socket.timeout:
                continue

    def since(self, t0: float, prefix: str) -> list[str]:
        return [m for t, m in self.messages if t >= t0 and m.startswith(prefix)]

    def close(self):
        self._stop = True
        self._thread.join()
        self.sock.close()


def test_notify_is_a_noop_outside_systemd(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval_s() == pytest.approx(1.0)
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert sdnotify.watchdog_interval_s() is None


def test_ready_status_watchdog_and_stopping(tiny_model_path, tmp_path, monkeypatch):
    listener = NotifyListener(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # fed every 0.2 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    server = start_server(make_config(tiny_model_path, tmp_path / "state", metrics_port=0, engine_stall_timeout_s=1.0))
    stall_file = server.app.config.fault_stall_file
    try:
        assert listener.since(0, "READY=1")
        assert listener.since(0, "STATUS=")
        t0 = time.monotonic()
        time.sleep(0.8)
        assert len(listener.since(t0, "WATCHDOG=1")) >= 2

        stall_file.touch()  # fault injection: the engine loop stops progressing
        time.sleep(2.0)  # the canary loop notices within 1 s; the heartbeat then ages past the interval
        t1 = time.monotonic()
        time.sleep(1.0)
        assert listener.since(t1, "WATCHDOG=1") == []
        health = httpx.get(server.base_url + "/health", timeout=5)
        assert health.status_code == 503 and "no progress" in health.json()["reason"]
        assert httpx.get(server.base_url + "/ready", timeout=5).status_code == 503

        stall_file.unlink()
        time.sleep(0.8)
        t2 = time.monotonic()
        time.sleep(0.8)
        assert listener.since(t2, "WATCHDOG=1")
        assert httpx.get(server.base_url + "/health", timeout=5).status_code == 200
    finally:
        stall_file.unlink(missing_ok=True)
        t3 = time.monotonic()
        server.stop()
        deadline = time.monotonic() + 3
        while not listener.since(t3, "STOPPING=1") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert listener.since(t3, "STOPPING=1"), [(round(t - t3, 3), m) for t, m in listener.messages if not m.startswith("WATCH")]
        listener.close()
