"""Three appliances on loopback ports behind a real smg, as docs/FLEET.md sets them up on three boxes.

Each box is its own `appliance serve` process (so one can be killed, and restarted as an upgrade
would), on the tiny model, with its keys in the session's PostgreSQL. The gateway is smg started
with the command line appliance-gateway.service runs (appliance.fleet.gateway_unit.smg_command),
and boxes join and leave it through their control sockets, as `appliance fleet join/leave` do.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from appliance.control.client import ControlClient
from appliance.fleet.gateway_unit import GatewaySettings, smg_command
from tests.appliance.conftest import free_port

BOX_CONFIG = """\
tls = false
host = "127.0.0.1"
port = {port}
metrics_port = {metrics_port}
state_dir = "{state_dir}"
control_socket = "{state_dir}/control.sock"
control_group = "{group}"
keys_database_url = "{database_url}"
model = "{model}"
served_model_name = "tiny"
fleet_gateway_file = "{gateway_file}"
drain_timeout_s = 10.0
canary_interval_s = 5.0

[engine]
num_kv_blocks = 256
max_num_seqs = 16
max_num_batched_tokens = 512
"""


@dataclass
class Box:
    name: str
    folder: Path
    port: int
    metrics_port: int
    process: subprocess.Popen | None = None
    log: Path = field(init=False)

    def __post_init__(self):
        self.log = self.folder / "serve.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> None:
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "appliance.cli", "serve", "--config", str(self.folder / "config.toml")],
                # One torch thread each: three boxes, the gateway and the clients share this machine's cores.
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.process.returncode}): {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} was not ready in {timeout_s} s: {self.log.read_text()[-2000:]}")

    def control(self) -> ControlClient:
        return ControlClient(self.folder / "control.sock", timeout_s=30.0)

    def terminate(self) -> None:
        """SIGTERM, as systemctl stop sends: the box drains and exits (stop() waits for it)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        self.terminate()
        if self.process is not None:
            self.process.wait(30)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def metric(self, name: str) -> float:
        """A sample summed over the box's label sets (0 when absent)."""
        from appliance.fleet.gateway_api import scrape

        return sum(value for _, value in scrape(self.metrics_url).get(name, []))


@dataclass
class Gateway:
    settings: GatewaySettings
    admin_key: str
    log: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return self.settings.url

    def start(self) -> None:
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(smg_command(self.settings, self.admin_key), stdout=log,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/health", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"smg did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(2)  # smg lingers in its shutdown grace period; nothing is in flight here
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def make_gateway(folder: Path, policy: str = "cache_aware") -> Gateway:
    settings = GatewaySettings(host="127.0.0.1", port=free_port(), metrics_port=free_port(), health_interval_s=1,
                               health_failure_threshold=1, policy=policy, smg=str(Path(sys.executable).with_name("smg")))
    return Gateway(settings, secrets.token_urlsafe(24), folder / f"smg-{policy}.log")


def make_box(name: str, folder: Path, model: Path, database_url: str, gateway_file: Path) -> Box:
    """A box's folder and config; `gateway_file`: where it looks for a gateway running beside it (gateway.json)."""
    import grp

    folder.mkdir(parents=True, exist_ok=True)
    box = Box(name, folder, free_port(), free_port())
    (folder / "config.toml").write_text(BOX_CONFIG.format(
        port=box.port, metrics_port=box.metrics_port, state_dir=folder, database_url=database_url, model=model,
        group=grp.getgrgid(os.getgid()).gr_name, gateway_file=gateway_file))
    return box


def describe_gateway(gateway: Gateway, root: Path) -> Path:
    """What `appliance fleet gateway` writes on the gateway's box (the admin key, gateway.json), under root; the
    gateway.json path."""
    import json

    from appliance.fleet.gateway_unit import GatewayFiles, gateway_description

    files = GatewayFiles(root)
    files.admin_key.parent.mkdir(parents=True, exist_ok=True)
    files.admin_key.write_text(gateway.admin_key + "\n")
    files.description.write_text(json.dumps(gateway_description(gateway.settings, files)))
    return files.description


def join(box: Box, gateway: Gateway) -> dict:
    with box.control() as control:
        return control.fleet_join(gateway.url, gateway.admin_key, box.url, timeout_s=30)


def fleet_command(box: Box, *args: str) -> dict:
    """`appliance fleet …` on a box, as its operator runs it; the --json answer."""
    import json

    done = subprocess.run([sys.executable, "-m", "appliance.cli", "fleet", *args, "--json",
                           "--config", str(box.folder / "config.toml"), "--socket", str(box.folder / "control.sock")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
