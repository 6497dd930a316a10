"""The key forms: create (name, limits, expiry, allowed models and networks) and edit them; and the one showing
of a new secret, with where to use it."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Select, Static

from tui import format as fmt
from tui.widgets.form import FormScreen, optional_int

PERIODS = [("per day", "day"), ("per month", "month")]


def parse_expiry(text: str, now: datetime) -> str | None:
    """'' (never), '30d', '12h', or a date / ISO time (UTC) → ISO 8601, or ValueError naming the field."""
    text = text.strip()
    if not text or text.lower() == "never":
        return None
    relative = re.fullmatch(r"(\d+)\s*([dh])", text.lower())
    if relative:
        amount, unit = int(relative[1]), relative[2]
        return (now + (timedelta(days=amount) if unit == "d" else timedelta(hours=amount))).isoformat()
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("Expires: enter a number of days (30d), hours (12h), a date (2026-12-31), "
                         "or leave it empty for never") from None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).isoformat()


def comma_list(text: str) -> list[str] | None:
    """'a, b' → ['a', 'b']; empty → None (no restriction). The service checks the entries themselves."""
    items = [m.strip() for m in text.split(",") if m.strip()]
    return items or None


class KeyFormScreen(FormScreen):
    """Create a key (dismisses with {"key", "api_key"}) or, given a record, edit it (dismisses with the record)."""

    def __init__(self, record: dict | None = None):
        if record:
            super().__init__(f"Edit key {record['name']} ({record['id']})", "Save")
        else:
            super().__init__("New API key", "Create")
        self.record = record

    def compose_fields(self) -> ComposeResult:
        r = self.record or {}

        def entry(input_id: str, value, placeholder: str) -> Input:
            return Input("" if value is None else str(value), placeholder=placeholder, id=input_id, compact=True)

        yield from self.field("Name", entry("name", r.get("name"), "who or what uses it"))
        yield from self.field("Requests/min", entry("rpm", r.get("rpm_limit"), "empty: no limit"))
        yield from self.field("Tokens/min", entry("tpm", r.get("tpm_limit"), "empty: no limit"))
        yield from self.field("Token budget", entry("budget", r.get("budget_tokens"), "empty: no budget"))
        yield from self.field("Budget period", Select(PERIODS, value=r.get("budget_period") or "day", allow_blank=False,
                                                      id="period", compact=True))
        yield from self.field("Expires", entry("expires", r.get("expires_at"), "never, 30d, 12h or 2026-12-31"))
        yield from self.field("Models", entry("models", ", ".join(r.get("allowed_models") or []),
                                              "all; or names, comma-separated"))
        yield from self.field("Networks", entry("networks", ", ".join(r.get("allowed_networks") or []),
                                                "any address; or CIDRs such as 10.0.0.0/8"))

    def read(self) -> dict:
        name = self.value("name")
        if not name:
            raise ValueError("Name: give the key a name, so you know later whose it is")
        body = {
            "name": name,
            "rpm_limit": optional_int(self.value("rpm"), "Requests/min"),
            "tpm_limit": optional_int(self.value("tpm"), "Tokens/min"),
            "budget_tokens": optional_int(self.value("budget"), "Token budget"),
            "budget_period": self.query_one("#period", Select).value,
            "allowed_models": comma_list(self.value("models")),
            "allowed_networks": comma_list(self.value("networks")),
        }
        expires = self.value("expires")
        if not self.record or expires != (self.record.get("expires_at") or ""):
            body["expires_at"] = parse_expiry(expires, datetime.fromtimestamp(self.app.state.now(), timezone.utc))
        return body

    def send(self, body: dict) -> dict:
        if self.record:
            return self.app.control.update_key(self.record["id"], **body)
        return self.app.control.create_key(body.pop("name"), **body)


class SecretScreen(ModalScreen[None]):
    """The new key's secret, shown this once: selectable, and `c` copies it (OSC 52, works over SSH in most terminals)."""

    BINDINGS = [
        Binding("c", "copy", "Copy the key"),
        Binding("escape", "close", "Close (the key is not shown again)"),
    ]

    def __init__(self, name: str, secret: str, listeners: dict | None = None):
        super().__init__()
        self.key_name = name
        self.secret = secret
        self.listeners = listeners  # the service's endpoints and certificate, from its latest snapshot

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog secret") as dialog:
            dialog.border_title = f"API key for {self.key_name}"
            yield Static("This is the only time the key is shown: the service keeps only a hash of it. "
                         "Copy it now (c, or select it with the mouse; shift+drag in most terminals).", classes="hint")
            yield Static(self.secret, id="secret")
            yield Static(f"Use it as: Authorization: Bearer {self.secret[:12]}…", classes="hint")
            if self.listeners:
                yield Static(endpoint_text(self.listeners), id="endpoint", classes="hint")
            with Horizontal(classes="buttons"):
                yield Button("Copy (c)", id="copy")
                yield Button("Done", id="done", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#copy", Button).focus()  # an absent-minded Enter copies rather than loses the key

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "copy":
            self.action_copy()
        else:
            self.action_close()

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.secret)
        self.notify("Copied to the clipboard (if your terminal allows OSC 52).")

    def action_close(self) -> None:
        self.dismiss(None)


def endpoint_text(listeners: dict) -> str:
    """Where a client sends the key, and which certificate it should see and trust."""
    tls = listeners.get("tls")
    if not listeners.get("https") or not tls:
        return f"Endpoint: {listeners['http']}/v1 (this machine only)"
    trust = f"trust {tls['trust_file']}" if tls.get("trust_file") else f"issued by {tls.get('issuer')}"
    return f"Endpoint: {listeners['https']}/v1 · certificate SHA-256 {tls['fingerprint_sha256']} ({trust})"


def budget_text(record: dict) -> str:
    budget = record.get("budget_tokens")
    return "∞" if budget is None else f"{fmt.limit(budget)}/{record.get('budget_period')}"


def limits_text(record: dict) -> str:
    networks = record.get("allowed_networks")
    return (f"{fmt.limit(record.get('rpm_limit'))} req/min · {fmt.limit(record.get('tpm_limit'))} tok/min · "
            f"budget {budget_text(record)}" + (f" · from {', '.join(networks)} only" if networks else ""))
