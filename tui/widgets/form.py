"""A modal form that sends itself to the service and stays open, showing the service's answer, until it is accepted.

Subclasses lay out their fields, turn them into a request body (`read`, raising ValueError with a
message that names the field) and send it (`send`, run in a thread worker: it may block on the
socket). The service's validation errors (HTTP 400 → ControlError.message) appear in the form.
"""

from __future__ import annotations

from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from appliance.control.client import ControlError
from tui.messages import Answered


class FormScreen(ModalScreen[Any]):
    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "submit", "Submit (enter in a field too)"),
    ]
    FORM_TITLE = ""
    SUBMIT_LABEL = "Save"

    def __init__(self, title: str | None = None, submit_label: str | None = None):
        super().__init__()
        self.form_title = title or self.FORM_TITLE
        self.submit_label = submit_label or self.SUBMIT_LABEL

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog form") as dialog:
            dialog.border_title = self.form_title
            yield from self.compose_intro()
            with Grid(classes="fields"):
                yield from self.compose_fields()
            yield Static("", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button(f"{self.submit_label} (ctrl+s)", id="submit", variant="primary")

    def compose_intro(self) -> ComposeResult:
        yield from ()

    def compose_fields(self) -> ComposeResult:
        raise NotImplementedError

    @staticmethod
    def field(label: str, widget) -> ComposeResult:
        yield Label(label, classes="field-label")
        yield widget

    def read(self) -> dict:
        """The request body from the fields; ValueError (naming the field) when one is wrong."""
        raise NotImplementedError

    def send(self, body: dict) -> Any:
        """Send the body to the service (in a worker thread); what it returns is the form's result."""
        raise NotImplementedError

    def value(self, input_id: str) -> str:
        return self.query_one(f"#{input_id}", Input).value.strip()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "submit":
            self.action_submit()
        else:
            self.action_cancel()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_submit()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def action_submit(self) -> None:
        submit = self.query_one("#submit", Button)
        if submit.disabled:  # already sent; wait for the answer
            return
        try:
            body = self.read()
        except ValueError as e:
            self.show_error(str(e))
            return
        self.show_error("sending…", error=False)
        submit.disabled = True
        self._send(body)

    def show_error(self, message: str, error: bool = True) -> None:
        status = self.query_one(".error", Static)
        status.update(message)
        status.set_class(not error, "-pending")

    @work(thread=True, exclusive=True, group="form")
    def _send(self, body: dict) -> None:
        try:
            self.post_message(Answered(self.dismiss, self.send(body)))
        except ControlError as e:
            self.post_message(Answered(self._refused, e))

    def on_answered(self, message: Answered) -> None:
        message.then(message.value)

    def _refused(self, error: ControlError) -> None:
        self.show_error(error.message)
        self.query_one("#submit", Button).disabled = False


def optional_int(text: str, field: str) -> int | None:
    """A limit field: empty means no limit."""
    if not text or text.lower() in ("none", "unlimited", "∞"):
        return None
    try:
        value = int(text.replace(",", "").replace("_", ""))
    except ValueError:
        raise ValueError(f"{field}: enter a whole number, or leave it empty for no limit") from None
    if value < 0:
        raise ValueError(f"{field}: must not be negative")
    return value
