"""SVG snapshots of the main screens at 80×24 and 120×40, fed by a recorded service so that nothing moves.

Update them after an intended change with: pytest tests/tui/test_snapshots.py --snapshot-update
(then look at the SVGs in tests/tui/__snapshots__/ before committing).
"""

import time

import pytest
from textual.widgets import DataTable

from tests.tui.recorded import KEYS, PULL_TASK, DownClient, RecordedClient, RecordedJournal
from tests.tui.conftest import show_screen, wait_for
from tui.app import ApplianceTUI
from tui.screens.key_forms import KeyFormScreen, SecretScreen
from tui.widgets.confirm import ConfirmScreen
from tui.widgets.log_view import LogView, RecordScreen
from tui.widgets.panels import GpuPanel, ModelEnginePanel

SIZES = [(80, 24), (120, 40)]
FIXED_SECRET = "sk-app-k1a2b3c4-9QqR2rW4f0k8Xy1mZcVb7TnLp3sDaE6h"


async def until(pilot, condition) -> None:
    """wait_for, then one more pause so that the screen has drawn what the condition saw."""
    await wait_for(pilot, condition, what="the recorded service's data")
    await pilot.pause()


def app_with(**recorded) -> ApplianceTUI:
    return ApplianceTUI(RecordedClient(**recorded), journal=RecordedJournal())


async def dashboard(pilot) -> None:
    app = pilot.app
    await until(pilot, lambda: app.state.latest is not None and (
        not app.state.latest["gpus"] or app.screen.query(GpuPanel)))


async def models(pilot) -> None:
    await dashboard(pilot)
    await show_screen(pilot, "2", "models")
    await until(pilot, lambda: pilot.app.screen.query_one(DataTable).row_count == 2)


async def keys(pilot) -> None:
    await dashboard(pilot)
    await show_screen(pilot, "3", "keys")
    await until(pilot, lambda: pilot.app.screen.query_one(DataTable).row_count == len(KEYS)
                and pilot.app.screen.query_one("#key-usage-graph").values)


async def health(pilot) -> None:
    await dashboard(pilot)
    await show_screen(pilot, "4", "health")
    await until(pilot, lambda: pilot.app.screen.query_one(LogView).records
                and "driver" in str(pilot.app.screen.query_one("#checks").render()))


async def fleet(pilot) -> None:
    await dashboard(pilot)
    await show_screen(pilot, "5", "fleet")
    await until(pilot, lambda: pilot.app.screen.query_one(DataTable).row_count == 3)


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "120x40"])
def test_fleet(snap_compare, size):
    assert snap_compare(app_with(), terminal_size=size, run_before=fleet)


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "120x40"])
def test_dashboard(snap_compare, size):
    assert snap_compare(app_with(), terminal_size=size, run_before=dashboard)


def test_dashboard_with_two_models_beside_the_default(snap_compare):
    async def run_before(pilot):
        await dashboard(pilot)
        await until(pilot, lambda: len(pilot.app.screen.query(ModelEnginePanel)) == 2)

    app = app_with(beside=("qwen2.5-7b-instruct", "bge-small-en"))
    assert snap_compare(app, terminal_size=(120, 40), run_before=run_before)


def test_dashboard_without_gpu(snap_compare):
    assert snap_compare(app_with(gpus=False), terminal_size=(80, 24), run_before=dashboard)


def test_dashboard_light_theme(snap_compare):
    app = app_with()
    app.theme = "textual-light"
    assert snap_compare(app, terminal_size=(80, 24), run_before=dashboard)


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "120x40"])
def test_models_with_a_pull_in_progress(snap_compare, size):
    assert snap_compare(app_with(task=PULL_TASK), terminal_size=size, run_before=models)


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "120x40"])
def test_keys(snap_compare, size):
    assert snap_compare(app_with(), terminal_size=size, run_before=keys)


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "120x40"])
def test_health_and_logs(snap_compare, size):
    assert snap_compare(app_with(), terminal_size=size, run_before=health)


def test_health_and_logs_a_record_in_full(snap_compare):
    async def run_before(pilot):
        await health(pilot)
        await pilot.press("enter")  # the newest line: a refused request
        await until(pilot, lambda: isinstance(pilot.app.screen, RecordScreen))

    assert snap_compare(app_with(), terminal_size=(80, 24), run_before=run_before)


def test_health_and_logs_with_the_service_down(snap_compare):
    """Killed and kept down by StartLimitBurst: systemctl's state and the unit's journal."""
    async def run_before(pilot):
        await show_screen(pilot, "4", "health")
        await until(pilot, lambda: len(pilot.app.screen.query_one(LogView).records) == 7)
        connection = pilot.app.state.connection
        await until(pilot, lambda: connection.retry_at is not None and connection.retry_at < time.monotonic())
        await pilot.pause(1.1)  # the app's 1 s tick redraws the top bar: "retrying…"

    app = ApplianceTUI(DownClient(), journal=RecordedJournal())
    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)


def test_help(snap_compare):
    async def run_before(pilot):
        await dashboard(pilot)
        await pilot.press("question_mark")

    assert snap_compare(app_with(), terminal_size=(80, 24), run_before=run_before)


def test_revoke_confirmation(snap_compare):
    async def run_before(pilot):
        await keys(pilot)
        await pilot.press("x")
        await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen))

    assert snap_compare(app_with(), terminal_size=(80, 24), run_before=run_before)


def test_new_key_form(snap_compare):
    async def run_before(pilot):
        await keys(pilot)
        await pilot.press("n")
        await until(pilot, lambda: isinstance(pilot.app.screen, KeyFormScreen))

    assert snap_compare(app_with(), terminal_size=(80, 24), run_before=run_before)


def test_new_key_secret(snap_compare):
    async def run_before(pilot):
        await keys(pilot)
        pilot.app.push_screen(SecretScreen("ci-bot", FIXED_SECRET))
        await until(pilot, lambda: isinstance(pilot.app.screen, SecretScreen))

    assert snap_compare(app_with(), terminal_size=(80, 24), run_before=run_before)
