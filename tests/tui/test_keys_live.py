"""The Keys screen against a real service: create (secret shown once), edit limits, revoke with a confirmation."""

import httpx
from textual.widgets import DataTable, Input

from appliance.control.client import ControlClient
from tests.tui.conftest import show_screen, text, wait_for
from tui.app import ApplianceTUI
from tui.screens.key_forms import KeyFormScreen, SecretScreen
from tui.widgets.confirm import ConfirmScreen


def table_text(app) -> str:
    table = app.screen.query_one(DataTable)
    return "\n".join(" ".join(str(cell) for cell in table.get_row_at(i)) for i in range(table.row_count))


async def open_keys(pilot, app) -> DataTable:
    await wait_for(pilot, lambda: app.state.connection.state == "connected", what="the connection")
    await show_screen(pilot, "3", "keys")
    return app.screen.query_one(DataTable)


def select_row(table: DataTable, key_id: str) -> None:
    table.move_cursor(row=table.get_row_index(key_id))


def models_call(service, secret: str) -> int:
    return httpx.get(f"{service.base_url}/v1/models", headers={"Authorization": f"Bearer {secret}"}).status_code


async def test_create_shows_the_secret_once_and_it_works(service, control):
    app = ApplianceTUI(ControlClient(service.app.config.control_socket))
    async with app.run_test(size=(100, 30)) as pilot:
        await open_keys(pilot, app)
        await pilot.press("n")
        assert isinstance(app.screen, KeyFormScreen)
        app.screen.query_one("#name", Input).value = "ci-bot"
        app.screen.query_one("#rpm", Input).value = "120"
        app.screen.query_one("#expires", Input).value = "30d"
        app.screen.query_one("#networks", Input).value = "127.0.0.0/8, 10.0.0.0/8"
        await pilot.press("ctrl+s")
        secret_screen = await wait_for(pilot, lambda: isinstance(app.screen, SecretScreen) and app.screen,
                                       what="the secret to be shown")
        secret = text(secret_screen.query_one("#secret"))
        assert secret.startswith("sk-app-")
        assert f"Endpoint: {service.base_url}/v1 (this machine only)" in text(secret_screen.query_one("#endpoint"))

        [record] = [k for k in control.keys() if k["name"] == "ci-bot"]
        assert record["rpm_limit"] == 120 and record["expires_at"] is not None
        assert record["allowed_networks"] == ["127.0.0.0/8", "10.0.0.0/8"]
        assert models_call(service, secret) == 200  # the secret on screen is the real key, from an allowed network

        await pilot.press("escape")
        await wait_for(pilot, lambda: "ci-bot" in table_text(app), what="the new key in the table")
        assert not app.screen_stack[-1].query(SecretScreen) and not isinstance(app.screen, SecretScreen)
        secret_part = secret.split("-", 3)[3]  # sk-app-<id>-<secret>; the secret may itself hold "-"
        assert secret not in table_text(app) and secret_part not in table_text(app)


async def test_form_keeps_what_the_operator_typed_and_says_what_is_wrong(service):
    app = ApplianceTUI(ControlClient(service.app.config.control_socket))
    async with app.run_test(size=(100, 30)) as pilot:
        await open_keys(pilot, app)
        await pilot.press("n")
        app.screen.query_one("#name", Input).value = "typo"
        app.screen.query_one("#tpm", Input).value = "lots"
        await pilot.press("ctrl+s")
        assert isinstance(app.screen, KeyFormScreen)  # still open, nothing lost
        assert "Tokens/min: enter a whole number" in text(app.screen.query_one(".error"))
        app.screen.query_one("#tpm", Input).value = ""
        app.screen.query_one("#networks", Input).value = "office"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: "allowed_networks: 'office'" in text(app.screen.query_one(".error")),
                       what="the service's refusal in the form")


async def test_revoke_asks_first_defaults_to_no_and_then_refuses_the_key(service, control):
    created = control.create_key("to-revoke")
    key_id, secret = created["key"]["id"], created["api_key"]
    app = ApplianceTUI(ControlClient(service.app.config.control_socket))
    async with app.run_test(size=(100, 30)) as pilot:
        table = await open_keys(pilot, app)
        await wait_for(pilot, lambda: table.row_count == 1, what="the key in the table")
        select_row(table, key_id)
        await pilot.press("x")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("enter")  # the default answer: No
        await wait_for(pilot, lambda: not isinstance(app.screen, ConfirmScreen), what="the question to close")
        assert control.keys()[0]["revoked_at"] is None and models_call(service, secret) == 200

        await pilot.press("x", "y")
        await wait_for(pilot, lambda: "revoked" in table_text(app), what="the key to show as revoked")
        assert control.keys()[0]["revoked_at"] is not None
        assert models_call(service, secret) == 403


async def test_edit_limits_changes_the_key_on_the_service(service, control):
    key_id = control.create_key("limited", rpm_limit=10)["key"]["id"]
    app = ApplianceTUI(ControlClient(service.app.config.control_socket))
    async with app.run_test(size=(100, 30)) as pilot:
        table = await open_keys(pilot, app)
        await wait_for(pilot, lambda: table.row_count == 1, what="the key in the table")
        select_row(table, key_id)
        await pilot.press("e")
        form = app.screen
        assert isinstance(form, KeyFormScreen) and form.query_one("#rpm", Input).value == "10"
        form.query_one("#rpm", Input).value = ""  # no limit
        form.query_one("#budget", Input).value = "1000000"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not isinstance(app.screen, KeyFormScreen), what="the form to close")
        record = control.keys()[0]
        assert record["rpm_limit"] is None and record["budget_tokens"] == 1_000_000
        await wait_for(pilot, lambda: "1M/day" in table_text(app), what="the new budget in the table")
