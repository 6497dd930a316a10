"""Fixtures for the TUI against a real service: `appliance serve` in a thread on the tiny model, its socket in tmp."""

import logging
import shutil
import time
from pathlib import Path

import pytest

from appliance.control.client import ControlClient
from tests.appliance.conftest import LiveServer, make_config, start_server

SECOND_MODEL = "tiny-b"


def tui_config(model_path: Path, state_dir: Path):
    # The socket's path must fit in sockaddr_un (108 bytes); pytest's temp folders do.
    return make_config(model_path, state_dir, metrics_port=0)


def add_to_store(state_dir: Path, model_path: Path, name: str) -> None:
    """Put a model folder into the service's store, as `appliance models import` would."""
    from appliance.models.store import write_manifest

    folder = state_dir / "models" / name
    shutil.copytree(model_path, folder)
    write_manifest(folder, name, source="local:test", revision=None)


@pytest.fixture
def service(tiny_model_path, tiny_model_path_b, tmp_path) -> LiveServer:
    """A fresh service per test (it starts in about half a second): tests change keys, models and run state."""
    state = tmp_path / "state"
    add_to_store(state, tiny_model_path_b, SECOND_MODEL)
    # `appliance serve` logs at info (setup_logging); here only the level, not its stderr handler.
    appliance_log = logging.getLogger("appliance")
    level = appliance_log.level
    appliance_log.setLevel(logging.INFO)
    server = start_server(tui_config(tiny_model_path, state))
    yield server
    if server.thread.is_alive():
        server.stop()
    appliance_log.setLevel(level)


@pytest.fixture
def control(service):
    with ControlClient(service.app.config.control_socket) as client:
        yield client


async def wait_for(pilot, condition, timeout_s: float = 10.0, what: str = "the condition", poll_s: float = 0.05):
    """Let the app run until condition() is true; the app's workers run meanwhile."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await pilot.pause(poll_s)


async def show_screen(pilot, key: str, mode: str) -> None:
    """Press a screen's key and wait until that screen is the one shown (switching is not instant)."""
    from tui.app import SCREEN_CLASSES

    await pilot.press(key)
    await wait_for(pilot, lambda: type(pilot.app.screen) is SCREEN_CLASSES[mode], what=f"the {mode} screen")


def text(widget) -> str:
    """What a widget shows, as plain text."""
    rendered = widget.render()
    return getattr(rendered, "plain", str(rendered))
