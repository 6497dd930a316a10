"""Health & Logs: readiness, the latest health checks (driver pin, GPUs, canary, disk), and the service log, followed.

The log reads like a log viewer (tui/widgets/log_view.py): columns, colour by level, `/` to filter,
`l` for the levels shown, Enter for the whole record. When the service is down, the screen shows
systemctl's state of the unit and the unit's last journal lines instead: the reason for a crash is
one keypress away (4).
"""

from __future__ import annotations

import time

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.content import Content
from textual.widgets import DataTable, Static

from appliance.control.client import ControlClient
from tui import format as fmt
from tui.screens.base import LiveScreen
from tui.state import ServiceState
from tui.unit_journal import UnitReport, state_text
from tui.widgets.log_view import KEEP as LOG_KEEP
from tui.widgets.log_view import LogView

CHECK_MARKS = {"ok": ("✓", "$text-success"), "warn": ("!", "$text-warning"), "fail": ("✗", "$text-error"),
               "n/a": ("–", "$text-muted")}
HEALTH_EVERY_S = 10.0  # the health timer runs every minute; readiness changes faster
JOURNAL_EVERY_S = 2.0  # while the service is down


def fetch_new_lines(client: ControlClient, after: int, boot_id: str | None) -> tuple[list[dict], int, str | None]:
    """The newest lines after `after` (at most LOG_KEEP), the number to ask from next time, the boot id."""
    page = client.logs(after=after, limit=LOG_KEEP)
    if boot_id is not None and page.get("boot_id") != boot_id:  # restarted: its lines are numbered from 1 again
        page = client.logs(after=0, limit=LOG_KEEP)
    return page.get("lines") or [], page.get("next", after), page.get("boot_id")


class HealthLogsScreen(LiveScreen):
    MODE = "health"
    POLL_S = 1.0  # new log lines; health itself every HEALTH_EVERY_S
    AUTO_FOCUS = "#log DataTable"  # arrows and page keys move through the log
    BINDINGS = [
        Binding("slash", "filter_log", "Filter"),
        Binding("l", "step_level", "Levels (all, info+, warning+, error+)"),
        Binding("enter", "show_record", "The whole record", show=False),
        Binding("f", "toggle_follow", "Follow on/off"),
        Binding("c", "clear_log", "Clear log view", show=False),
        Binding("r", "reload_health", "Refresh health"),
    ]

    def compose_body(self) -> ComposeResult:
        with VerticalScroll(id="health"):
            yield Static("Asking the service for its health…", id="readiness")
            yield Static(id="checks")
        yield Static("", id="log-title")
        yield LogView(id="log")

    def on_mount(self) -> None:
        self.log_next = 0  # the seq to ask from; 0 before the first answer
        self.log_boot_id: str | None = None  # the service process the numbering belongs to
        self.health_at = float("-inf")  # monotonic time of the last health request
        self.journal_at = float("-inf")
        self.source = "service"  # whose lines the log shows: the service's, or the unit's journal
        self._show_log_title()

    @property
    def log_view(self) -> LogView:
        return self.query_one(LogView)

    # -- the service up: health and its log --------------------------------------------------------
    def reload(self) -> None:
        if self.source == "journal":  # back from the journal: the service's own lines again, from its start
            self.source, self.log_next, self.log_boot_id = "service", 0, None
            self.log_view.clear()
        if time.monotonic() - self.health_at >= HEALTH_EVERY_S:
            self.action_reload_health()
        after, boot_id = self.log_next, self.log_boot_id
        self.call_service(lambda c: fetch_new_lines(c, after, boot_id), self._add_lines, what="Reading the service log",
                          group="logs", failed=lambda e: self.query_one("#log-title", Static).update(
                              Content.styled(f"Log: {e.message}", "$text-error")))

    def action_reload_health(self) -> None:
        self.health_at = time.monotonic()
        self.call_service(lambda c: c.health(), self._show_health, what="Reading health", group="health")

    def _show_health(self, answer: dict) -> None:
        if self.source != "service":
            return
        ready, reasons = answer.get("ready"), answer.get("ready_reasons") or []
        now = self.app.state.now()
        readiness = (Content.styled("Ready: serving requests", "$text-success") if ready else
                     Content.styled("Not ready: " + ("; ".join(reasons) or "no reason given"), "$text-error"))
        report = answer.get("report")
        if report is None:
            self.query_one("#readiness", Static).update(readiness)
            self.query_one("#checks", Static).update(
                "No health report yet. The appliance-health timer runs `appliance health` every minute; "
                "run it now with: sudo appliance health")
            return
        verdict = ("all checks pass", "$text-success") if report.get("ok") else ("something is wrong", "$text-error")
        self.query_one("#readiness", Static).update(Content.assemble(
            readiness, "\n", ("Health: ", "bold"), verdict,
            f" · checked {fmt.ago(report.get('checked_at'), now)} ({fmt.clock(report.get('checked_at'))} UTC)"))
        rows = []
        for check in report.get("checks") or []:
            mark, style = CHECK_MARKS.get(check.get("status"), ("?", ""))
            message_style = style if check.get("status") in ("warn", "fail") else ""
            rows.append(Content.assemble((f" {mark} ", style), (f"{check.get('name', ''):<14}", "bold"), " ",
                                         (check.get("message") or "", message_style)))
        self.query_one("#checks", Static).update(Content("\n").join(rows))

    def _add_lines(self, answer: tuple[list[dict], int, str | None]) -> None:
        if self.source != "service":
            return
        lines, self.log_next, self.log_boot_id = answer
        self.log_view.add_lines(lines)
        self._show_log_title()

    # -- the service down: systemctl and the journal -----------------------------------------------
    def show_state(self, state: ServiceState) -> None:
        super().show_state(state)
        self._read_journal_when_down(state)

    def show_connection(self, state: ServiceState) -> None:
        super().show_connection(state)
        self._read_journal_when_down(state)

    def _read_journal_when_down(self, state: ServiceState) -> None:
        if state.connection.state != "disconnected" or time.monotonic() - self.journal_at < JOURNAL_EVERY_S:
            return
        self.journal_at = time.monotonic()
        journal = self.app.journal
        self.call_service(lambda _client: journal.read(LOG_KEEP), self._show_journal, what="Reading the journal",
                          group="journal")

    def _show_journal(self, report: UnitReport) -> None:
        state = self.app.state
        if state.connection.state != "disconnected":
            return
        self.source = "journal"
        self.query_one("#readiness", Static).update(Content.assemble(  # the top bar says why it is unreachable
            ("systemctl: ", "bold"), f"{self.app.journal.unit} {state_text(report.state)}"))
        self.query_one("#checks", Static).update(
            Content.styled(report.problem, "$text-warning") if report.problem else
            Content.styled("The unit's last journal lines are below, newest last (Enter: the whole line).", "$text-muted"))
        shown = [(r.line.get("time"), r.line.get("message")) for r in self.log_view.records]
        if shown != [(line.get("time"), line.get("message")) for line in report.lines]:
            self.log_view.replace(report.lines)
        self._show_log_title()

    # -- the log --------------------------------------------------------------------------------
    def _show_log_title(self) -> None:
        view = self.log_view
        source = f"Journal of {self.app.journal.unit}" if self.source == "journal" else "Service log"
        follow = "following" if view.follow else "paused (f to follow)"
        self.query_one("#log-title", Static).update(Content.assemble(
            (source, "bold"), f" · {follow} · {view.title} · times UTC"))

    def action_filter_log(self) -> None:
        self.log_view.open_filter()

    def action_step_level(self) -> None:
        self.log_view.step_level()
        self._show_log_title()

    def action_show_record(self) -> None:
        table = self.log_view.query_one(DataTable)
        if table.row_count:
            table.action_select_cursor()

    def action_toggle_follow(self) -> None:
        view = self.log_view
        view.follow = not view.follow
        if view.follow:
            view.add_lines([])
        self._show_log_title()

    def action_clear_log(self) -> None:
        self.log_view.clear()

    def on_input_changed(self) -> None:
        self._show_log_title()
