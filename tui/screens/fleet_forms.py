"""The form that puts this box behind a fleet's gateway (`appliance fleet join`)."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.widgets import Input, Static

from tui.widgets.form import FormScreen

DEFAULT_ADMIN_KEY_FILE = "/etc/appliance/gateway-admin.key"


class JoinFormScreen(FormScreen):
    """Dismisses with the service's answer: this box's membership."""

    FORM_TITLE = "Join a fleet's gateway"
    SUBMIT_LABEL = "Join"

    def __init__(self, advertise: str):
        super().__init__()
        self.advertise = advertise

    def compose_intro(self) -> ComposeResult:
        yield Static("The gateway probes this box's /ready and routes requests to it once the probes pass. "
                     "Keys must be in the fleet's PostgreSQL (keys_database_url).", classes="hint")

    def compose_fields(self) -> ComposeResult:
        yield from self.field("Gateway URL", Input(placeholder="https://llm.example.com", id="gateway", compact=True))
        yield from self.field("Admin key file", Input(value=DEFAULT_ADMIN_KEY_FILE, id="key_file", compact=True))
        yield from self.field("This box's URL", Input(value=self.advertise, id="advertise", compact=True))

    def read(self) -> dict:
        gateway, advertise = self.value("gateway"), self.value("advertise")
        if not gateway.startswith(("http://", "https://")):
            raise ValueError("Gateway URL: enter it as https://HOST[:PORT]")
        if not advertise.startswith(("http://", "https://")):
            raise ValueError("This box's URL: how the gateway reaches this box, as https://HOST:PORT")
        try:
            admin_key = Path(self.value("key_file")).read_text().strip()
        except OSError as e:
            raise ValueError(f"Admin key file: cannot read it ({e.strerror}); copy the gateway's "
                             f"{DEFAULT_ADMIN_KEY_FILE} here") from None
        return {"gateway_url": gateway, "admin_key": admin_key, "worker_url": advertise}

    def send(self, body: dict) -> dict:
        return self.app.control.fleet_join(body["gateway_url"], body["admin_key"], body["worker_url"])
