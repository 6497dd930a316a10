"""The app as a whole against a real service: health and the followed log, keys for everything, no freezing, quitting."""

import logging
import socket
import subprocess
import sys
import time

import httpx
from textual.widgets import DataTable

from appliance.control.client import ControlClient
from tests.tui.conftest import show_screen, text, wait_for
from tests.tui.recorded import RecordedClient
from tui.app import ApplianceTUI
from tui.messages import SnapshotReceived
from tui.screens.help import HelpScreen
from tui.widgets.log_view import RecordScreen


def log_rows(app) -> list[str]:
    """The log view's rows as they are on screen, cells joined by spaces."""
    table = app.screen.query_one("#log").query_one(DataTable)
    return [" ".join(str(cell) for cell in table.get_row_at(i)) for i in range(table.row_count)]


def log_text(app) -> str:
    return "\n".join(log_rows(app))


async def test_health_screen_shows_readiness_and_follows_the_service_log(service):
    app = ApplianceTUI(ControlClient(service.app.config.control_socket))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.state.connection.state == "connected", what="the connection")
        await show_screen(pilot, "4", "health")
        await wait_for(pilot, lambda: "Ready: serving requests" in text(app.screen.query_one("#readiness")),
                       what="readiness")
        assert "No health report yet" in text(app.screen.query_one("#checks"))  # `appliance health` never ran here
        await wait_for(pilot, lambda: "ready: serving" in log_text(app), what="the service's startup lines")

        logging.getLogger("appliance.test").warning("a line written while the TUI watches")
        await wait_for(pilot, lambda: "a line written while the TUI watches" in log_text(app), timeout_s=5,
                       what="the new line to be followed")


async def test_a_request_is_one_row_in_columns_found_by_the_filter_and_shown_whole(service, control):
    key = control.create_key("log-view")
    app = ApplianceTUI(ControlClient(service.app.config.control_socket))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.state.connection.state == "connected", what="the connection")
        await show_screen(pilot, "4", "health")
        r = httpx.post(service.base_url + "/v1/completions", headers={"Authorization": f"Bearer {key['api_key']}"},
                       json={"model": service.model, "prompt": "log me", "max_tokens": 3, "ignore_eos": True})
        assert r.status_code == 200
        key_id = key["key"]["id"]
        row = await wait_for(pilot, lambda: next((row for row in log_rows(app) if key_id in row and " request " in row),
                                                 None), what="the request's row")
        assert row.split()[1:4] == ["INFO", "request", "ok"]
        assert f" {service.model[:9]}… {key_id} completions 2+3 tok " in row and row.endswith(" length")

        await pilot.press("slash")
        await pilot.press(*f"{key_id} request")
        await wait_for(pilot, lambda: len(log_rows(app)) == 1, what="the filter to leave the one row")
        await pilot.press("enter")  # leaves the filter line for the table
        await pilot.press("enter")  # the whole record
        await wait_for(pilot, lambda: isinstance(app.screen, RecordScreen), what="the record")
        assert app.screen.record.details["request_id"] == r.json()["id"]
        await pilot.press("escape")
        await pilot.press("l", "l")  # warning and above: no request line is a warning
        await wait_for(pilot, lambda: not log_rows(app), what="the level toggle to hide it")


async def test_help_and_command_palette_come_from_the_binding_tables(service):
    app = ApplianceTUI(ControlClient(service.app.config.control_socket))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        help_text = "\n".join(text(w) for w in app.screen.query("Static"))
        commands = [c.title for c in app.get_system_commands(app.screen)]
        for section, _mode, bindings in app.binding_tables():
            assert section in help_text
            for binding in bindings:
                assert binding.description in help_text
                if binding.action != "command_palette":  # the palette does not offer itself
                    assert any(binding.description in title for title in commands)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)

        # A palette command for another screen's action goes there and runs it.
        [new_key] = [c for c in app.get_system_commands(app.screen) if c.title == "Keys: New key"]
        await new_key.callback()
        await pilot.pause()
        assert app.current_mode == "keys" and type(app.screen).__name__ == "KeyFormScreen"


async def _switch_every_screen(app: ApplianceTUI) -> float:
    """Seconds to visit every main screen and come back, by key."""
    async with app.run_test(size=(80, 24)) as pilot:
        started = time.monotonic()
        for key, mode in (("2", "models"), ("3", "keys"), ("4", "health"), ("5", "fleet"), ("tab", "dashboard")):
            await pilot.press(key)
            assert app.current_mode == mode
        return time.monotonic() - started


async def test_keys_switch_screens_while_the_service_hangs(tmp_path):
    """A service that accepts connections and never answers must not freeze the TUI.

    Measured against the same switches with no service at all (every call refused at once), in the
    same run: a key that waited on the hung service would add the client's 10 s timeout."""
    alone = await _switch_every_screen(ApplianceTUI(ControlClient(tmp_path / "absent.sock")))
    hung = socket.socket(socket.AF_UNIX)
    hung.bind(str(tmp_path / "hung.sock"))
    hung.listen(8)
    try:
        app = ApplianceTUI(ControlClient(tmp_path / "hung.sock"))
        hanging = await _switch_every_screen(app)
        assert hanging < alone + 2.0, f"{hanging:.1f} s with the service hanging, {alone:.1f} s without one"
        assert app.state.connection.state == "connecting"
    finally:
        hung.close()  # resets the pending connection, so the worker's read ends at once


def test_tui_app_imports_no_engine_or_torch():
    """`appliance tui` starts fast over SSH only if it never imports the heavy half of the appliance."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", "import tui.app"],
                            capture_output=True, text=True, check=True)
    modules = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    heavy = {m for m in modules if m.split(".")[0] in ("torch", "transformers", "engine")
             or m.startswith(("appliance.service", "appliance.serve", "appliance.api"))}
    assert not heavy, f"tui.app imports {sorted(heavy)}"
    assert "textual.app" in modules


async def test_q_quits(service):
    app = ApplianceTUI(ControlClient(service.app.config.control_socket))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.state.connection.state == "connected", what="the connection")
        started = time.monotonic()
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running, what="the app to exit")
        assert time.monotonic() - started < 1.5


async def test_mouse_switches_screens_by_their_tabs(service):
    app = ApplianceTUI(ControlClient(service.app.config.control_socket))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.state.connection.state == "connected", what="the connection")
        tabs = text(app.screen.query_one("#tabs"))
        for title, mode in (("Keys", "keys"), ("Models", "models"), ("Dashboard", "dashboard")):
            await pilot.click("#tabs", offset=(tabs.index(title) + 1, 0))
            await pilot.pause()
            assert app.current_mode == mode


async def test_snapshots_arriving_while_screens_switch_never_break_the_app():
    """A snapshot lands while a screen or a GPU panel is still being mounted (CI caught both crashing the app)."""
    app = ApplianceTUI(RecordedClient())
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.state.latest is not None, poll_s=0.001, what="the first snapshot")
        for _ in range(20):  # sent at once: the first snapshot's GPU panels are still mounting
            app.post_message(SnapshotReceived(app.state.latest))
            await pilot.pause(0)
        for mode in ("models", "keys", "health", "fleet", "dashboard") * 10:
            app.switch_mode(mode)  # not awaited: the snapshot is handled while the screen mounts
            app.post_message(SnapshotReceived(app.state.latest))
            await pilot.pause()
        await show_screen(pilot, "2", "models")
    assert app.return_code in (None, 0)


async def test_when_the_service_goes_down_the_health_screen_shows_the_units_journal(service):
    from tests.tui.recorded import RecordedJournal

    app = ApplianceTUI(ControlClient(service.app.config.control_socket), journal=RecordedJournal())
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.state.connection.state == "connected", what="the connection")
        await show_screen(pilot, "4", "health")
        await wait_for(pilot, lambda: "ready: serving" in log_text(app), what="the service's own log")
        service.stop()
        await wait_for(pilot, lambda: "Start request repeated too quickly" in log_text(app), what="the journal")
        assert "failed/failed (result: signal)" in text(app.screen.query_one("#readiness"))
        assert "Journal of appliance.service" in text(app.screen.query_one("#log-title"))
        assert "ready: serving tiny" not in log_text(app)  # the service's lines made way for the journal's
