"""Health & Logs: readiness, the latest health checks (driver pin, GPUs, canary, disk), and the service log, followed."""

from __future__ import annotations

import time

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.content import Content
from textual.widgets import RichLog, Static

from appliance.control.client import ControlClient
from tui import format as fmt
from tui.screens.base import LiveScreen

CHECK_MARKS = {"ok": ("✓", "$text-success"), "warn": ("!", "$text-warning"), "fail": ("✗", "$text-error"),
               "n/a": ("–", "$text-muted")}
# Rich styles for the log (RichLog renders Rich text): named ANSI colours read on dark and light terminals.
LEVEL_STYLES = {"DEBUG": "dim", "INFO": "", "WARNING": "yellow", "ERROR": "bold red", "CRITICAL": "bold red reverse"}
LOG_KEEP = 2000  # lines kept on screen
HEALTH_EVERY_S = 10.0  # the health timer runs every minute; readiness changes faster


def fetch_new_lines(client: ControlClient, after: int, boot_id: str | None) -> tuple[list[dict], int, str | None]:
    """The newest lines after `after` (at most LOG_KEEP), the number to ask from next time, the boot id."""
    page = client.logs(after=after, limit=LOG_KEEP)
    if boot_id is not None and page.get("boot_id") != boot_id:  # restarted: its lines are numbered from 1 again
        page = client.logs(after=0, limit=LOG_KEEP)
    return page.get("lines") or [], page.get("next", after), page.get("boot_id")


def log_line(line: dict) -> Text:
    level = (line.get("level") or "").upper()
    style = LEVEL_STYLES.get(level, "")
    return Text.assemble(
        (fmt.clock(line.get("time")), "dim"), " ", (level.ljust(7), style), " ",
        ((line.get("logger") or "").removeprefix("appliance."), "dim"), " ", (line.get("message") or "", style))


class HealthLogsScreen(LiveScreen):
    MODE = "health"
    POLL_S = 1.0  # new log lines; health itself every HEALTH_EVERY_S
    AUTO_FOCUS = "#log"  # arrows and page keys scroll the log
    BINDINGS = [
        Binding("f", "toggle_follow", "Follow log on/off"),
        Binding("c", "clear_log", "Clear log view"),
        Binding("r", "reload_health", "Refresh health"),
    ]

    def compose_body(self) -> ComposeResult:
        with VerticalScroll(id="health"):
            yield Static("Asking the service for its health…", id="readiness")
            yield Static(id="checks")
        yield Static("", id="log-title")
        yield RichLog(id="log", max_lines=LOG_KEEP, wrap=True, auto_scroll=True)

    def on_mount(self) -> None:
        self.log_next = 0  # the seq to ask from; 0 before the first answer
        self.log_boot_id: str | None = None  # the service process the numbering belongs to
        self.health_at = float("-inf")  # monotonic time of the last health request
        self._show_log_title()

    def reload(self) -> None:
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
        lines, self.log_next, self.log_boot_id = answer
        log = self.query_one(RichLog)
        for line in lines:
            log.write(log_line(line))
        self._show_log_title()

    def _show_log_title(self) -> None:
        follow = "following" if self.query_one(RichLog).auto_scroll else "paused (f to follow)"
        self.query_one("#log-title", Static).update(Content.assemble(("Service log", "bold"), f" · {follow} · times UTC"))

    def action_toggle_follow(self) -> None:
        log = self.query_one(RichLog)
        log.auto_scroll = not log.auto_scroll
        if log.auto_scroll:
            log.scroll_end(animate=False)
        self._show_log_title()

    def action_clear_log(self) -> None:
        self.query_one(RichLog).clear()
