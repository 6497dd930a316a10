"""Graceful drain: SIGTERM during streams lets them finish; what outlives the timeout gets an error event."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.appliance.conftest import add_keys, free_port, make_config, start_server

REPO = Path(__file__).resolve().parents[2]


def read_stream(base_url: str, headers: dict, body: dict, started: threading.Event, result: dict) -> None:
    try:
        with httpx.stream("POST", base_url + "/v1/completions", json=body, headers=headers, timeout=60) as r:
            result["status"] = r.status_code
            events = []
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[len("data: "):])
                    started.set()
            result["events"] = events
    except Exception as e:  # recorded for the assertion message
        result["exception"] = repr(e)
        started.set()


def wait_ready(base_url: str, proc: subprocess.Popen, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"serve exited early with {proc.returncode}"
        try:
            if httpx.get(base_url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("serve did not become ready")


def test_sigterm_drains_streams_and_exits_zero(tiny_model_path, tmp_path):
    from appliance.keys import KeyStore

    with KeyStore(tmp_path / "keys.db") as store:
        _, key = store.create("drain")
    port, metrics_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", "serve", "--model", str(tiny_model_path), "--host", "127.0.0.1",
         "--port", str(port), "--metrics-port", str(metrics_port), "--state-dir", str(tmp_path),
         "--control-socket", str(tmp_path / "control.sock"), "--drain-timeout", "30", "--num-kv-blocks", "256"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base_url, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    try:
        wait_ready(base_url, proc)
        model = Path(tiny_model_path).name
        body = {"model": model, "prompt": "drain me", "max_tokens": 300, "ignore_eos": True, "stream": True}
        streams = []
        for _ in range(4):
            started, result = threading.Event(), {}
            t = threading.Thread(target=read_stream, args=(base_url, headers, body, started, result))
            t.start()
            streams.append((t, started, result))
        for _, started, _ in streams:
            assert started.wait(30)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        ready = httpx.get(base_url + "/ready", timeout=5)
        assert ready.status_code == 503 and any("draining" in r for r in ready.json()["reasons"])
        refused = httpx.post(base_url + "/v1/completions", json={**body, "stream": False}, headers=headers, timeout=5)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
        assert int(refused.headers["Retry-After"]) >= 1
        for t, _, result in streams:
            t.join(60)
            assert result.get("status") == 200, result
            events = result["events"]
            assert events[-1] == "[DONE]", events[-3:]
            final = json.loads(events[-2])
            assert final["choices"][0]["finish_reason"] == "length", final
            assert sum(1 for e in events[:-1] if json.loads(e)["choices"][0]["text"] is not None) == 300
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = proc.stdout.read()
    assert "draining" in log and "stopped (exit code 0)" in log
    # Three uvicorn servers, one process: its lifecycle said once; no progress bar in the journal.
    assert log.count("Started server process") == 1 and log.count("Finished server process") == 1, log
    assert "Loading weights" not in log, log


def test_requests_outliving_the_drain_timeout_end_with_an_error_event(tiny_model_path, tmp_path):
    server = start_server(make_config(tiny_model_path, tmp_path, drain_timeout_s=0.5, metrics_port=0))
    add_keys(server, server.app.config.keys_db_path)
    body = {"model": server.model, "prompt": "long", "max_tokens": 1000, "ignore_eos": True, "stream": True}
    started, result = threading.Event(), {}
    reader = threading.Thread(target=read_stream, args=(server.base_url, server.headers(), body, started, result))
    reader.start()
    assert started.wait(30)
    t0 = time.monotonic()
    server.stop()
    reader.join(30)
    assert time.monotonic() - t0 < 10
    events = result["events"]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "draining" and error["type"] == "service_unavailable_error"
    assert server.app.exit_code == 0
    assert not server.service.pool.active.async_engine.is_alive
    assert os.path.exists(server.app.config.keys_db_path)
