"""The Models screen against a real service: hot swap with a confirmation and live progress, delete, pull errors."""

from textual.widgets import DataTable, Input

from appliance.control.client import ControlClient
from tests.tui.conftest import SECOND_MODEL, show_screen, text, wait_for
from tui.app import ApplianceTUI
from tui.messages import TaskProgress
from tui.screens.model_forms import PullFormScreen
from tui.widgets.confirm import ConfirmScreen


async def open_models(pilot, app) -> DataTable:
    await wait_for(pilot, lambda: app.state.connection.state == "connected", what="the connection")
    await show_screen(pilot, "2", "models")
    table = app.screen.query_one(DataTable)
    await wait_for(pilot, lambda: table.row_count >= 1, what="the store's models")
    return table


def loaded_marker(table: DataTable, name: str) -> str:
    return str(table.get_row(name)[0])


async def test_swap_asks_then_swaps_with_live_progress(service, control):
    progress: list[tuple[str, str]] = []  # (state, stage) of every progress event the TUI received

    def hook(message) -> None:
        if isinstance(message, TaskProgress):
            progress.append((message.task["state"], message.task["stage"]))

    app = ApplianceTUI(ControlClient(service.app.config.control_socket))
    async with app.run_test(size=(100, 30), message_hook=hook) as pilot:
        table = await open_models(pilot, app)
        table.move_cursor(row=table.get_row_index(SECOND_MODEL))
        await pilot.press("s")
        assert isinstance(app.screen, ConfirmScreen)
        assert "Swap the live model" in text(app.screen.query_one(".question"))
        await pilot.press("n")
        assert control.models()["task"] is None  # "no" changed nothing

        await pilot.press("s", "y")
        await wait_for(pilot, lambda: "Loading tiny-b" in text(app.screen.query_one("#task-title")),
                       what="the progress panel")
        await wait_for(pilot, lambda: app.state.task and app.state.task["state"] == "done", timeout_s=30,
                       what="the load to finish")
        assert progress[0][0] == "running" and progress[-1] == ("done", "done")
        assert "done" in text(app.screen.query_one("#task-title"))
        assert "100%" in text(app.screen.query_one("#task-progress"))
        await wait_for(pilot, lambda: loaded_marker(table, SECOND_MODEL) == "●", what="tiny-b marked as loaded")
        assert control.models()["loaded"] == SECOND_MODEL


async def test_delete_asks_and_removes_the_model_from_the_store(service, control):
    app = ApplianceTUI(ControlClient(service.app.config.control_socket))
    async with app.run_test(size=(100, 30)) as pilot:
        table = await open_models(pilot, app)
        table.move_cursor(row=table.get_row_index(SECOND_MODEL))
        await pilot.press("d")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("enter")  # No has the focus
        assert SECOND_MODEL in [m["name"] for m in control.models()["models"]]
        await pilot.press("d", "y")
        await wait_for(pilot, lambda: SECOND_MODEL not in [m["name"] for m in control.models()["models"]],
                       what="the model to be deleted")
        await wait_for(pilot, lambda: SECOND_MODEL not in table.rows, what="the table to drop it")


async def test_pull_form_shows_the_service_refusal(service):
    app = ApplianceTUI(ControlClient(service.app.config.control_socket))
    async with app.run_test(size=(100, 30)) as pilot:
        await open_models(pilot, app)
        await pilot.press("p")
        form = app.screen
        assert isinstance(form, PullFormScreen)
        form.query_one("#repo", Input).value = "not-a-repo-id"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: "Hugging Face repository id" in text(form.query_one(".error")),
                       what="the service's message in the form")
        assert app.screen is form  # still open, to fix the field
