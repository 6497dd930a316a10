"""Fleet: this box's place behind a gateway, the key store it shares, and — where the gateway runs — every box.

Per box: the gateway's view (healthy, circuit breaker) and the box's own figures (queue, KV
usage, tokens/s, prefix-cache hits), as the service reads them from the gateway's admin API and
metrics and from each box's metrics. `j` joins this box to a gateway, `l` leaves (with
confirmation: the gateway stops sending requests here, those in flight finish).
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static

from tui import format as fmt
from tui.screens.base import LiveScreen
from tui.screens.fleet_forms import JoinFormScreen
from tui.state import ServiceState
from tui.widgets.confirm import ConfirmScreen

COLUMNS = ("Box", "URL", "Health", "Circuit", "Waiting", "Running", "KV", "Tok/s", "Prefix hits", "Routed")
CIRCUIT_STYLES = {"closed": "green", "half-open": "yellow", "open": "red"}


def key_store_text(store: dict | None) -> Text:
    """One line on the key store: where it is and whether it answers (with what the outage rule did)."""
    if store is None:
        return Text("Keys: no key store", style="red")
    where = "shared PostgreSQL" if store.get("shared") else "this box's keys.db"
    if store.get("reachable", True):
        return Text.assemble("Keys: ", (where, "bold"), f" at {store.get('location')}, answering")
    return Text.assemble(
        "Keys: ", (where, "bold"), (" UNREACHABLE", "bold red"),
        f" ({store.get('last_error') or 'no answer'}): keys verified in the last {store.get('grace_s', 0):.0f} s "
        f"keep working ({store.get('grace_admissions', 0)} let in), others get 503 ({store.get('refusals', 0)} refused)")


def membership_text(fleet: dict) -> Text:
    membership = fleet.get("membership")
    if fleet.get("leaving") and membership is None:
        return Text("This box left its fleet: the gateway sends it nothing (j joins again).", style="yellow")
    if membership is None:
        return Text("This box is not in a fleet (j joins a gateway).", style="dim")
    return Text.assemble("This box: behind ", (membership["gateway_url"], "bold"), f" as {membership['worker_url']} "
                         f"since {fmt.clock(membership['joined_at'])} (l leaves)")


class FleetScreen(LiveScreen):
    MODE = "fleet"
    POLL_S = 3.0  # the gateway's view and the boxes' figures are read, not pushed
    BINDINGS = [
        Binding("j", "join", "Join a gateway"),
        Binding("l", "leave", "Leave the fleet"),
        Binding("r", "reload", "Refresh"),
    ]

    def compose_body(self) -> ComposeResult:
        yield Static("", id="fleet-keys")
        yield Static("", id="fleet-membership")
        table = DataTable(id="fleet-table", cursor_type="row")
        table.add_columns(*COLUMNS)
        yield table
        yield Static("", id="fleet-empty")

    def on_mount(self) -> None:
        self.fleet: dict = {}

    def show_state(self, state: ServiceState) -> None:
        super().show_state(state)
        self.query_one("#fleet-keys", Static).update(key_store_text((state.latest or {}).get("key_store")))

    def reload(self) -> None:
        self.call_service(lambda c: c.fleet(), self._show_fleet, what="Reading the fleet", group="fleet",
                          failed=lambda e: self._show_empty(f"Could not read the fleet: {e.message}"))

    def _show_fleet(self, fleet: dict) -> None:
        self.fleet = fleet
        self.query_one("#fleet-membership", Static).update(membership_text(fleet))
        gateway = fleet.get("gateway")
        table = self.query_one(DataTable)
        table.clear()
        if gateway is None:
            self._show_empty("No gateway runs on this box: the fleet's boxes show where `appliance fleet gateway` "
                             "set one up.")
            return
        for box in gateway.get("boxes") or []:
            healthy = Text("healthy", style="green") if box.get("healthy") else Text("UNHEALTHY", style="bold red")
            circuit = box.get("circuit") or fmt.MISSING
            cells = [fmt.number(box.get("waiting")), fmt.number(box.get("running")), fmt.percent(box.get("kv_usage")),
                     fmt.number(box.get("generation_tokens_per_s"), 1), fmt.percent(box.get("prefix_cache_hit_rate")),
                     fmt.count(box.get("routed_total"))]
            table.add_row(Text(box.get("host") or fmt.MISSING, style="bold"), Text(box["url"]), healthy,
                          Text(circuit, style=CIRCUIT_STYLES.get(circuit, "")), *map(Text, cells), key=box["url"])
        error = gateway.get("error")
        self._show_empty(f"The gateway at {gateway['url']}: {error}" if error else
                         "" if gateway.get("boxes") else f"No box has joined the gateway at {gateway['url']} yet.")

    def _show_empty(self, message: str) -> None:
        empty = self.query_one("#fleet-empty", Static)
        empty.update(message)
        empty.display = bool(message)

    def action_reload(self) -> None:
        self.reload()

    def action_join(self) -> None:
        listeners = (self.app.state.latest or {}).get("listeners") or {}
        advertise = listeners.get("https") or listeners.get("http") or ""
        self.app.push_screen(JoinFormScreen(advertise), self._joined)

    def _joined(self, answer: dict | None) -> None:
        if answer:
            self.notify(f"Joined {answer['membership']['gateway_url']}.")
            self.reload()

    def action_leave(self) -> None:
        membership = self.fleet.get("membership")
        if membership is None:
            self.notify("This box is not in a fleet.")
            return
        question = (f"Take this box out of the fleet behind {membership['gateway_url']}?\n\n"
                    "The gateway stops sending it requests at once; those in flight finish here. "
                    "The other boxes take its share.")
        self.app.push_screen(ConfirmScreen("Leave the fleet", question, "Leave"),
                             lambda yes: yes and self.call_service(lambda c: c.fleet_leave(), self._left,
                                                                   what="Leaving the fleet"))

    def _left(self, answer: dict) -> None:
        self.notify(f"Left {answer['left']}: {answer['in_flight_at_leave']} requests finished here.")
        self.reload()
