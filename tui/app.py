"""`appliance tui`: the operator's dashboard over the control socket.

Thin on purpose: it composes the screens (one textual mode each), owns the connection worker and
the ServiceState it feeds, and declares the app-wide keys. Every binding has a description, and
the help screen and the command palette are both built from the binding tables.

Imports only textual, httpx and the control client: it must start fast over SSH, so never torch,
transformers, engine or appliance.service (tests check with `python -X importtime`).
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Iterable
from functools import partial
from pathlib import Path

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import ModalScreen, Screen
from textual.worker import get_current_worker

from appliance.control.client import ControlClient, resolve_socket
from tui import connection
from tui.messages import ServiceConnected, ServiceDisconnected, SnapshotReceived, TaskProgress
from tui.screens.base import MAIN_SCREENS, LiveScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.fleet import FleetScreen
from tui.screens.health_logs import HealthLogsScreen
from tui.screens.help import HelpScreen
from tui.screens.keys import KeysScreen
from tui.screens.models import ModelsScreen
from tui.state import ServiceState
from tui.unit_journal import UnitJournal

THEMES = {"dark": "textual-dark", "light": "textual-light", "ansi": "textual-ansi"}
SCREEN_CLASSES: dict[str, type[LiveScreen]] = {
    "dashboard": DashboardScreen, "models": ModelsScreen, "keys": KeysScreen, "health": HealthLogsScreen,
    "fleet": FleetScreen}
# Switching screens under a modal (a form, a confirmation) would hide the question being asked.
NOT_UNDER_MODAL = {"show_screen", "next_screen", "previous_screen", "help", "toggle_theme"}


class ApplianceTUI(App):
    CSS_PATH = "app.tcss"
    TITLE = "appliance"
    MODES = SCREEN_CLASSES
    DEFAULT_MODE = "dashboard"
    BINDINGS = [
        *(Binding(str(number), f"show_screen('{mode}')", title, show=False)
          for number, (mode, title) in enumerate(MAIN_SCREENS, 1)),
        Binding("question_mark", "help", "Help"),
        Binding("ctrl+p", "command_palette", "Commands", show=False),
        Binding("t", "toggle_theme", "Switch colours (dark, light, terminal)", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, client: ControlClient, theme: str = "dark", journal: UnitJournal | None = None):
        super().__init__()
        self.control = client  # thread-safe: the connection worker and action workers share it
        self.journal = journal or UnitJournal()  # read when the service is down
        self.state = ServiceState()
        self.theme = THEMES[theme]
        self._stopping = threading.Event()

    # -- the connection -----------------------------------------------------------------------
    def on_mount(self) -> None:
        self.follow_service()
        self.set_interval(1.0, self._tick)

    def on_unmount(self) -> None:
        self._stopping.set()  # wakes the worker from its back-off sleep
        self.control.interrupt_events()  # and from a read waiting for the next event: quitting is immediate

    @work(thread=True, exclusive=True, group="connection", name="follow the service")
    def follow_service(self) -> None:
        worker = get_current_worker()
        connection.follow(self.control, self.post_message,
                          lambda: worker.is_cancelled or self._stopping.is_set(), self._stopping.wait)

    def on_service_connected(self, message: ServiceConnected) -> None:
        self.state.connected(message.history)
        self._show(reload=True)

    def on_snapshot_received(self, message: SnapshotReceived) -> None:
        self.state.add_snapshot(message.snapshot)
        self._show()

    def on_service_disconnected(self, message: ServiceDisconnected) -> None:
        self.state.disconnected(message.message, message.retry_in_s)
        self._show()

    def on_task_progress(self, message: TaskProgress) -> None:
        # Progress can come many times a second (a download): redraw only what shows the task.
        task = message.task
        self.state.update_task(task)
        if task.get("state") == "done":
            self.notify(f"{task.get('kind')} of {task.get('target')} finished", title="Done")
        elif task.get("state") == "failed":
            self.notify(f"{task.get('kind')} of {task.get('target')} failed: {task.get('error')}",
                        title="Failed", severity="error", timeout=15)
        screen = self._drawable_screen()
        if screen is not None:
            screen.show_task(self.state)
            if task.get("state") != "running":
                screen.reload()

    def _show(self, reload: bool = False) -> None:
        """Redraw the visible main screen; `reload`: also refetch what it lists (models, keys, health)."""
        screen = self._drawable_screen()
        if screen is not None:
            screen.show_state(self.state)
            if reload:
                screen.reload()

    def _tick(self) -> None:
        # Between snapshots only the retry countdown and "no data for N s" move.
        screen = self._drawable_screen()
        if screen is not None and (self.state.connection.state != "connected" or self.state.stale()):
            screen.show_connection(self.state)

    def _drawable_screen(self) -> LiveScreen | None:
        """The visible main screen, unless a screen switch or shutdown is half done (nothing to draw on)."""
        if not self.screen_stack:
            return None
        screen = self.screen
        return screen if isinstance(screen, LiveScreen) and screen.composed else None

    # -- actions ------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (action in NOT_UNDER_MODAL and isinstance(self.screen, ModalScreen))

    def action_show_screen(self, mode: str) -> None:
        self.switch_mode(mode)

    def action_next_screen(self, step: int = 1) -> None:
        modes = [mode for mode, _ in MAIN_SCREENS]
        self.switch_mode(modes[(modes.index(self.current_mode) + step) % len(modes)])

    def action_previous_screen(self) -> None:
        self.action_next_screen(-1)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.binding_tables()))

    def action_toggle_theme(self) -> None:
        names = list(THEMES.values())
        self.theme = names[(names.index(self.theme) + 1) % len(names)] if self.theme in names else names[0]

    # -- one table of keys for help and the command palette -------------------------------------
    def binding_tables(self) -> list[tuple[str, str | None, list[Binding]]]:
        """(section title, mode or None, bindings): everywhere first, then each screen's own."""
        tables = [("Everywhere", None, [*self._bindings_of(self.BINDINGS), *self._bindings_of(LiveScreen.BINDINGS)])]
        for mode, title in MAIN_SCREENS:
            own = SCREEN_CLASSES[mode].__dict__.get("BINDINGS", [])
            if own:
                tables.append((title, mode, list(self._bindings_of(own))))
        return tables

    @staticmethod
    def _bindings_of(bindings: Iterable) -> Iterable[Binding]:
        return (b for b in bindings if isinstance(b, Binding) and b.description)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        for command in super().get_system_commands(screen):
            if command.title != "Quit":  # ours, below, says its key
                yield command
        for section, mode, bindings in self.binding_tables():
            for binding in bindings:
                if binding.action == "command_palette":  # already open
                    continue
                key = self.get_key_display(binding)
                title = binding.description if mode is None else f"{section}: {binding.description}"
                yield SystemCommand(title, f"key {key}", partial(self._run_binding, mode, binding.action))

    async def _run_binding(self, mode: str | None, action: str) -> None:
        if mode is None:
            await self.run_action(action)
            return
        await self.switch_mode(mode)
        await self.run_action(action, self.screen)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", type=Path, help="control socket (default: $APPLIANCE_CONTROL_SOCKET, "
                                                    "else the config's control_socket, /run/appliance/control.sock)")
    parser.add_argument("--dev", action="store_true", help="the socket of `appliance serve --dev`")
    parser.add_argument("--theme", choices=list(THEMES), default="dark",
                        help="colours: dark, light, or ansi (your terminal's own palette); `t` switches while running")


def run(args: argparse.Namespace) -> int:
    socket_path = resolve_socket(args.socket, getattr(args, "dev", False))
    client = ControlClient(socket_path)
    try:
        ApplianceTUI(client, theme=getattr(args, "theme", "dark")).run()
    finally:
        client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance tui", description="The operator's dashboard.")
    add_arguments(parser)
    return run(parser.parse_args(argv))
