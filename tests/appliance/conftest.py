"""Live-server fixtures: `appliance serve` in a background thread on random ports, with keys; a fake clock."""

import asyncio
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from appliance.config import Config, ModelSettings
from engine.config import EngineConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def put_in_store(models_dir: Path, source: Path, name: str) -> Path:
    """A model folder copied into a service's store, as `models import` leaves it."""
    from appliance.models.store import write_manifest

    folder = models_dir / name
    shutil.copytree(source, folder)
    write_manifest(folder, name, source="local:test", revision=None)
    return folder


def make_config(model_path: Path, state_dir: Path, **overrides) -> Config:
    # float32: the same numerics on every CPU (dtype auto is bfloat16 where the CPU computes it natively), so
    # outputs compare with transformers' float32 reference
    engine = EngineConfig(dtype="float32", num_kv_blocks=256, max_num_seqs=16, max_num_batched_tokens=512)
    for name in list(overrides):
        if hasattr(engine, name):
            setattr(engine, name, overrides.pop(name))
    values = dict(
        model=str(model_path), host="127.0.0.1", port=0, metrics_port=free_port(), state_dir=state_dir,
        control_socket=state_dir / "control.sock", drain_timeout_s=10.0, canary_interval_s=5.0, engine=engine,
    )
    values.update(overrides)
    return Config(**values)


@dataclass
class LiveServer:
    app: object
    thread: threading.Thread
    keys: dict[str, str] = field(default_factory=dict)  # name -> secret key
    key_ids: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.app.public_port}"

    @property
    def https_url(self) -> str:
        return f"https://localhost:{self.app.https_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.app.metrics_port}/metrics"

    @property
    def service(self):
        return self.app.service

    @property
    def model(self) -> str:
        return self.app.service.pool.model_name

    @property
    def key(self) -> str:
        return self.keys["main"]

    def headers(self, key: str | None = None) -> dict:
        return {"Authorization": f"Bearer {key or self.key}"}

    def stop(self, timeout_s: float = 30.0) -> None:
        self.app.request_shutdown()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the server did not stop"


def start_server(config: Config, timeout_s: float = 60.0) -> LiveServer:
    from appliance.serve import Appliance

    app = Appliance(config)
    thread = threading.Thread(target=lambda: asyncio.run(app.run(install_signal_handlers=False)), daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not app.started.is_set():
        if not thread.is_alive():
            raise RuntimeError(f"the server exited during startup (code {app.exit_code})")
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not become ready")
        time.sleep(0.05)
    return LiveServer(app, thread)


def add_keys(server: LiveServer, db_path: Path) -> None:
    from appliance.keys import KeyStore

    store = KeyStore(db_path)
    try:
        past = datetime.now(timezone.utc) - timedelta(days=1)
        specs = {
            "main": {},
            "other-model-only": {"allowed_models": ["some-other-model"]},
            "rpm1": {"rpm_limit": 1},
            "expired": {"expires_at": past},
            "revoked": {},
        }
        for name, limits in specs.items():
            record, secret = store.create(name, **limits)
            server.keys[name], server.key_ids[name] = secret, record.id
        store.revoke(server.key_ids["revoked"])
    finally:
        store.close()


@pytest.fixture(scope="session")
def live_server(tiny_model_path, tmp_path_factory) -> LiveServer:
    """One shared server on the tiny model; tests must leave it idle and undrained."""
    state = tmp_path_factory.mktemp("appliance-state")
    server = start_server(make_config(tiny_model_path, state))
    add_keys(server, server.app.config.keys_db_path)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def default_server(default_model_path, tmp_path_factory) -> LiveServer:
    """One shared server on the real default model (float32: the same numerics on every CPU), for tests that
    need a model that writes language; slow, so only `slow` tests use it."""
    state = tmp_path_factory.mktemp("appliance-default-state")
    server = start_server(make_config(default_model_path, state, metrics_port=0, dtype="float32",
                                      num_kv_blocks=1024, max_num_seqs=32, max_num_batched_tokens=2048))
    add_keys(server, server.app.config.keys_db_path)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tools_server(tiny_model_path, default_model_path, tmp_path_factory) -> LiveServer:
    """One server for the API tests that need models with chat templates of our own, shared by their modules:
    `tiny-hermes` (the default: the tiny random model with a tool-aware Hermes template, so every valid call is
    the grammar's doing), `tiny-reasoning` (`<think> I think</think> Paris`: api/reasoning_model.py) and
    `tiny-agent` (the Hermes template; calls where the grammar makes it, else answers ` It is sunny.`)."""
    from transformers import AutoTokenizer

    from tests.appliance.api.reasoning_model import build_chain_model, build_reasoning_model
    from tests.appliance.serving.formats.tools.templates import HERMES_TEMPLATE

    state, built = tmp_path_factory.mktemp("tools-state"), tmp_path_factory.mktemp("tools-models")
    hermes = built / "tiny-hermes"
    shutil.copytree(tiny_model_path, hermes)
    tokenizer = AutoTokenizer.from_pretrained(hermes)
    tokenizer.chat_template = HERMES_TEMPLATE
    tokenizer.save_pretrained(hermes)
    put_in_store(state / "models", hermes, "tiny-hermes")
    put_in_store(state / "models", build_reasoning_model(built / "tiny-reasoning", default_model_path), "tiny-reasoning")
    agent = build_chain_model(built / "tiny-agent", default_model_path, ["\n", " It", " is", " sunny", "."],
                              HERMES_TEMPLATE)
    put_in_store(state / "models", agent, "tiny-agent")
    pinned = ModelSettings(pinned=True)
    config = make_config("tiny-hermes", state, metrics_port=0, models={"tiny-reasoning": pinned, "tiny-agent": pinned})
    server = start_server(config, timeout_s=120)
    add_keys(server, server.app.config.keys_db_path)
    yield server
    server.stop()


def openai_clients(server: LiveServer, timeout_s: float = 120.0):
    """The openai SDK's sync and async clients for `server`'s main key."""
    import openai

    options = dict(base_url=server.base_url + "/v1", api_key=server.key, max_retries=0, timeout=timeout_s)
    return openai.OpenAI(**options), openai.AsyncOpenAI(**options)


def chat_choice(client, stream: bool, **request):
    """The first choice of a chat completion, made by the SDK's stream helper when `stream`, else in one piece."""
    if not stream:
        return client.chat.completions.create(**request).choices[0]
    with client.chat.completions.stream(**request) as events:
        for _ in events:
            pass
    return events.get_final_completion().choices[0]


@pytest.fixture
def http(live_server):
    with httpx.Client(base_url=live_server.base_url, headers=live_server.headers(), timeout=30.0) as client:
        yield client


@pytest.fixture
def client(live_server):
    import openai

    return openai.OpenAI(base_url=live_server.base_url + "/v1", api_key=live_server.key, max_retries=0, timeout=30.0)


@pytest.fixture
def async_client(live_server):
    import openai

    return openai.AsyncOpenAI(base_url=live_server.base_url + "/v1", api_key=live_server.key, max_retries=0, timeout=30.0)


def wait_engine_idle(service, timeout_s: float = 5.0) -> object:
    """Poll until nothing runs or waits and no KV block is held; returns the last stats."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = service.pool.active.async_engine.stats()
        if stats.num_running == 0 and stats.num_waiting == 0 and stats.kv_blocks_used == 0:
            return stats
        if time.monotonic() > deadline:
            return stats
        time.sleep(0.02)


class FakeClock:
    """Monotonic seconds and UTC time that move only when told to."""

    def __init__(self, start: datetime = datetime(2026, 3, 14, 12, 0, tzinfo=timezone.utc)):
        self.seconds = 1000.0
        self.start = start

    def monotonic(self) -> float:
        return self.seconds

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.seconds - 1000.0)

    def advance(self, seconds: float) -> None:
        self.seconds += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
