"""The top of every screen: clickable tabs, the connection and service state, and a banner when something is wrong."""

from __future__ import annotations

import time

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.content import Content
from textual.widget import Widget
from textual.widgets import Static

from tui import format as fmt
from tui.state import ServiceState

STATE_STYLES = {"ready": "$text-success", "failed": "$text-error"}  # the others (loading, draining) are warnings


def summary(state: ServiceState) -> tuple[str, str]:
    """(text, style) for the right of the top bar."""
    connection = state.connection
    if connection.state == "connecting":
        return "connecting…", "$text-warning"
    if connection.state == "disconnected":
        wait = max(0, round((connection.retry_at or 0) - time.monotonic()))
        return f"○ disconnected — retrying{f' in {wait} s' if wait else '…'}", "$text-error"
    snapshot = state.latest or {}
    service = snapshot.get("service") or {}
    if state.stale():
        return f"● no data for {fmt.duration(state.silent_for())}", "$text-warning"
    service_state = service.get("state") or "unknown"
    parts = [f"● {service_state}", service.get("model") or "no model"]
    task = state.task
    if task and task.get("state") == "running":
        parts.append(f"{task.get('kind')} {task.get('target')} {fmt.percent(task.get('fraction'))}")
    else:
        parts.append(f"up {fmt.duration(service.get('uptime_s'))}")
    return " · ".join(parts), STATE_STYLES.get(service_state, "$text-warning")


def banner(state: ServiceState) -> str | None:
    """A line saying what is wrong and what to do, or None when all is well."""
    connection = state.connection
    if connection.state == "disconnected":
        return f"disconnected — retrying: {connection.message}"
    snapshot = state.latest or {}
    service = snapshot.get("service") or {}
    if service and not service.get("ready", True):
        reasons = service.get("ready_reasons") or []
        return f"not ready ({service.get('state')}): " + ("; ".join(reasons) or "no reason given")
    health = snapshot.get("health") or {}
    if health.get("ok") is False:
        return "health check failed: " + ("; ".join(health.get("problems") or []) or "see Health & Logs (4)")
    return None


class TopBar(Widget):
    DEFAULT_CSS = """
    TopBar { height: auto; dock: top; }
    TopBar > Horizontal { height: 1; background: $panel; }
    TopBar #tabs { width: auto; }
    TopBar #summary { width: 1fr; text-align: right; padding-right: 1; text-wrap: nowrap; text-overflow: ellipsis; }
    TopBar #banner { display: none; background: $error-muted; color: $text; padding: 0 1; }
    TopBar #banner.-shown { display: block; }
    """

    def __init__(self, screens: list[tuple[str, str]], current: str):
        super().__init__()
        self.screens = screens
        self.current = current

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Static(self._tabs(), id="tabs")
            yield Static("", id="summary")
        yield Static("", id="banner")

    def _tabs(self) -> Content:
        parts: list = []
        for number, (mode, title) in enumerate(self.screens, 1):
            style = "reverse bold" if mode == self.current else ""
            parts.append(Content.from_markup(f"[@click=app.show_screen('{mode}')] {number} $title [/]", title=title)
                         .stylize(style))
        return Content(" ").join(parts)

    def show(self, state: ServiceState) -> None:
        text, style = summary(state)
        self.query_one("#summary", Static).update(Content.styled(text, style))
        message = banner(state)
        banner_widget = self.query_one("#banner", Static)
        banner_widget.set_class(message is not None, "-shown")
        if message is not None:
            banner_widget.update(message)
