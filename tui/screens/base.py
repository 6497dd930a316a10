"""What the main screens share: the top bar, the footer, tab to move between them, live updates."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer

from appliance.control.client import ControlClient, ControlError
from tui.messages import Answered
from tui.state import ServiceState
from tui.widgets.top_bar import TopBar

if TYPE_CHECKING:
    from tui.app import ApplianceTUI

# (mode, title) in the order of the tabs and the digit keys.
MAIN_SCREENS = [("dashboard", "Dashboard"), ("models", "Models"), ("keys", "Keys"), ("health", "Health & Logs"),
                ("fleet", "Fleet")]


class LiveScreen(Screen):
    """A main screen. The app calls `show_state` on the visible one whenever the state changes."""

    MODE = ""
    # False until the screen is first resumed, when its widgets are mounted: a snapshot that arrives
    # while a screen switch is still mounting it must wait for on_screen_resume to draw it.
    composed = False
    POLL_S: float | None = None  # reload this often while the screen is shown (what snapshots do not carry)
    # Tab moves between screens, not focus: each main screen has a single focusable widget.
    BINDINGS = [
        Binding("tab", "app.next_screen", "Next screen", show=False),
        Binding("shift+tab", "app.previous_screen", "Previous screen", show=False),
    ]

    app: ApplianceTUI

    def compose(self) -> ComposeResult:
        yield TopBar(MAIN_SCREENS, self.MODE)
        yield from self.compose_body()
        yield Footer()

    def compose_body(self) -> ComposeResult:
        raise NotImplementedError

    def on_mount(self) -> None:
        self._in_flight: set[str] = set()
        self._poll = self.set_interval(self.POLL_S, self._poll_tick, pause=True) if self.POLL_S else None

    def on_screen_resume(self) -> None:
        self.composed = True
        self.show_state(self.app.state)
        if self.app.state.connection.state == "connected":
            self.reload()
        if self._poll is not None:
            self._poll.resume()

    def on_screen_suspend(self) -> None:
        if self._poll is not None:
            self._poll.pause()

    def _poll_tick(self) -> None:
        if self.app.state.connection.state == "connected":
            self.reload()

    def show_state(self, state: ServiceState) -> None:
        """Redraw from the state: the top bar here, the body in subclasses (which call super)."""
        self.query_one(TopBar).show(state)

    def reload(self) -> None:
        """Refetch what this screen lists that snapshots do not carry (models, keys, health); on show and on reconnect."""

    def call_service(self, call: Callable[[ControlClient], Any], done: Callable[[Any], object], *,
                     what: str, group: str | None = None,
                     failed: Callable[[ControlError], object] | None = None) -> None:
        """Run `call(client)` in a thread worker, then `done(result)` on the UI thread.

        With a `group`, a call of that group still in flight makes this one a no-op, so periodic
        reloads never pile up behind a slow service. Errors go to `failed`, else to a notification
        that starts with `what` and carries the service's message (which says what to do).
        """
        if group is not None:
            if group in self._in_flight:
                return
            self._in_flight.add(group)

        def work() -> None:
            try:
                value, then = call(self.app.control), done
            except ControlError as e:
                value, then = e, failed or (lambda error: self._notify_failure(f"{what}: {error.message}"))
            self.post_message(Answered(then, value, group))

        self.run_worker(work, thread=True, name=what, group=group or "action")

    def on_answered(self, message: Answered) -> None:
        self._in_flight.discard(message.group)
        message.then(message.value)

    def _notify_failure(self, message: str) -> None:
        self.notify(message, severity="error", timeout=10)

    def show_task(self, state: ServiceState) -> None:
        """A load, pull or import moved on: the top bar says so on every screen (Models shows more)."""
        self.query_one(TopBar).show(state)

    def show_connection(self, state: ServiceState) -> None:
        """Only the connection changed (a countdown tick): the top bar alone."""
        self.query_one(TopBar).show(state)
