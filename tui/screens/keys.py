"""Keys: every API key with its limits, use and cost; create (secret shown once), edit limits, revoke."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.content import Content
from textual.widgets import DataTable, Static

from appliance.control.cost_text import key_text, money
from tui import format as fmt
from tui.screens.base import LiveScreen
from tui.screens.key_forms import KeyFormScreen, SecretScreen, budget_text, limits_text
from tui.widgets.confirm import ConfirmScreen
from tui.widgets.history import History

COLUMNS = ("Name", "Status", "Last used", "Today", "Cost today", "RPM", "TPM", "Budget", "Expires", "Models", "Created",
           "ID")
# DataTable renders Rich text, so Rich styles here; named ANSI colours follow the theme's palette.
STATUS_STYLES = {"active": "green", "revoked": "red", "expired": "yellow"}
USAGE_DAYS = 30


def tokens_per_day(days: list[dict], today: date, count: int = USAGE_DAYS) -> list[int]:
    """One number per calendar day, oldest first, ending today: the service lists only days with use."""
    used = {d["day"]: (d.get("prompt_tokens") or 0) + (d.get("completion_tokens") or 0) for d in days}
    return [used.get((today - timedelta(days=back)).isoformat(), 0) for back in reversed(range(count))]


def today_text(usage: dict | None) -> str:
    if not usage:
        return fmt.MISSING
    tokens = (usage.get("prompt_tokens") or 0) + (usage.get("completion_tokens") or 0)
    return f"{fmt.count(usage.get('requests') or 0)} req · {fmt.count(tokens)} tok"


class KeysScreen(LiveScreen):
    MODE = "keys"
    POLL_S = 5.0  # last used and today's usage move with traffic
    BINDINGS = [
        Binding("n", "new_key", "New key"),
        Binding("e", "edit_key", "Edit limits"),
        Binding("x", "revoke_key", "Revoke"),
        Binding("r", "reload", "Refresh"),
    ]

    def compose_body(self) -> ComposeResult:
        table = DataTable(id="keys-table", cursor_type="row")
        table.add_columns(*COLUMNS)
        yield table
        yield Static("", id="keys-empty")
        with Horizontal(id="key-detail"):
            yield Static(id="key-usage-text")
            yield History(floor=1, id="key-usage-graph")  # tokens per day

    def on_mount(self) -> None:
        self.keys: dict[str, dict] = {}
        self.cost: dict = {}  # /v1/cost: each key's share of the box's cost

    # -- data -----------------------------------------------------------------------------------
    def reload(self) -> None:
        self.call_service(lambda c: (c.keys(), c.cost()), self._show_keys, what="Listing keys", group="keys",
                          failed=lambda e: self._show_empty(f"Could not list the keys: {e.message}"))

    def _show_keys(self, answer: tuple[list[dict], dict]) -> None:
        records, self.cost = answer
        table = self.query_one(DataTable)
        selected = self.selected_id()
        now = self.app.state.now()
        self.keys = {r["id"]: r for r in records}
        table.clear()
        for record in records:
            status = record["status"]  # the key store decides: active, revoked or expired
            cells = [fmt.ago(record.get("last_used_at"), now), today_text(record.get("usage_today")),
                     money(self._cost_of(record["id"], "today").get("cost"), self.cost.get("currency", "USD")),
                     fmt.limit(record.get("rpm_limit")), fmt.limit(record.get("tpm_limit")), budget_text(record),
                     fmt.day(record.get("expires_at"), missing="never"),
                     ", ".join(record.get("allowed_models") or []) or "all", fmt.day(record.get("created_at")), record["id"]]
            # Text, not str: DataTable would read a str as Rich markup, and names are the operators' own.
            table.add_row(Text(record["name"], style="bold" if status == "active" else "dim"),
                          Text(status, style=STATUS_STYLES.get(status, "")), *map(Text, cells), key=record["id"])
        if selected in self.keys:
            table.move_cursor(row=table.get_row_index(selected))
        self._show_empty("" if records else "No API keys yet: press n to create one.")
        self._show_usage_of_selected()

    def _cost_of(self, key_id: str, window: str) -> dict:
        return (self.cost.get("keys") or {}).get(key_id, {}).get(window) or {}

    def _show_empty(self, message: str) -> None:
        empty = self.query_one("#keys-empty", Static)
        empty.update(message)
        empty.display = bool(message)

    def selected_id(self) -> str | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return row_key.value

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_usage_of_selected()

    def _show_usage_of_selected(self) -> None:
        key_id = self.selected_id()
        self.query_one("#key-detail").display = key_id is not None
        if key_id is None:
            return
        self.call_service(lambda c: c.key_usage(key_id, days=USAGE_DAYS),
                          lambda days: self._show_usage(key_id, days), what="Reading the key's usage")

    def _show_usage(self, key_id: str, days: list[dict]) -> None:
        record = self.keys.get(key_id)
        if record is None or key_id != self.selected_id():
            return  # the selection moved on while we asked
        requests = sum(d.get("requests") or 0 for d in days)
        today = datetime.fromtimestamp(self.app.state.now(), timezone.utc).date()  # usage days are UTC
        tokens = tokens_per_day(days, today)
        self.query_one("#key-usage-text", Static).update(Content.assemble(
            (record["name"], "bold"), f" ({key_id})\n", limits_text(record), "\n",
            f"last {USAGE_DAYS} days: {fmt.count(requests)} requests, {fmt.count(sum(tokens))} tokens · cost "
            f"{key_text(self._cost_of(key_id, '30d'), self.cost.get('currency', 'USD'))}"))
        self.query_one("#key-usage-graph", History).set(tokens)

    # -- actions --------------------------------------------------------------------------------
    def action_reload(self) -> None:
        self.reload()

    def action_new_key(self) -> None:
        self.app.push_screen(KeyFormScreen(), self._created)

    def _created(self, answer: dict | None) -> None:
        if answer is None:
            return
        self.reload()
        listeners = (self.app.state.latest or {}).get("listeners")
        self.app.push_screen(SecretScreen(answer["key"]["name"], answer["api_key"], listeners))

    def action_edit_key(self) -> None:
        record = self.keys.get(self.selected_id() or "")
        if record is None:
            return
        self.app.push_screen(KeyFormScreen(record), lambda saved: saved and self.reload())

    def action_revoke_key(self) -> None:
        record = self.keys.get(self.selected_id() or "")
        if record is None:
            return
        if record.get("revoked_at"):
            self.notify(f"{record['name']} is already revoked.")
            return
        question = (f"Revoke the key {record['name']} ({record['id']})?\n\n"
                    "Requests with it are refused from now on, and its stored responses are deleted. This cannot "
                    "be undone: to let its user back in, create a new key.")
        self.app.push_screen(ConfirmScreen("Revoke key", question, "Revoke"),
                             lambda yes: yes and self.call_service(lambda c: c.revoke_key(record["id"]), self._revoked,
                                                                   what=f"Revoking {record['name']}"))

    def _revoked(self, record: dict) -> None:
        self.notify(f"Revoked {record.get('name')}.")
        self.reload()
