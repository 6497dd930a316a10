"""Dashboard: the engine, the host and each GPU, live, with history graphs.

The panels stack: engine (the default model, and the service's totals), one per other loaded model,
cost, host, then the GPUs (scroll for more than one at 80×24). From 120
columns the graphs get longer (more seconds of history) and several GPUs sit two abreast.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.events import Resize
from textual.widgets import Static

from tui.screens.base import LiveScreen
from tui.state import ServiceState
from tui.widgets.panels import CostPanel, EnginePanel, GpuPanel, HostPanel, ModelEnginePanel

WIDE_COLUMNS = 120


class DashboardScreen(LiveScreen):
    MODE = "dashboard"

    def compose_body(self) -> ComposeResult:
        with VerticalScroll(id="dashboard"):
            yield Static("waiting for the first snapshot from the service…", id="waiting")
            yield EnginePanel(id="engine")
            yield Vertical(id="models")
            yield CostPanel(id="cost")
            yield HostPanel(id="host")
            yield Static(id="gpu-notice")
            yield Vertical(id="gpus")

    _rebuilding = False

    def on_resize(self, event: Resize) -> None:
        self.set_class(event.size.width >= WIDE_COLUMNS, "-wide")

    def show_state(self, state: ServiceState) -> None:
        super().show_state(state)
        snapshot = state.latest
        self.query_one("#waiting").display = snapshot is None
        for panel in (self.query_one(EnginePanel), self.query_one(CostPanel), self.query_one(HostPanel)):
            panel.display = snapshot is not None
            if snapshot is not None:
                panel.show(state)
        if snapshot is None:
            return
        gpus = snapshot.get("gpus") or []
        notice = self.query_one("#gpu-notice", Static)
        notice.display = not gpus
        if not gpus:
            notice.update(f"No GPU: {snapshot.get('gpu_status') or 'the service reports no GPU'}")
        if self._rebuilding:  # new panels are still mounting their widgets; the rebuild draws them
            return
        models = [e["model"] for e in snapshot.get("engines") or [] if not e.get("default")]
        if self._sync("#models", ModelEnginePanel, "model", models, state):  # one rebuild at a time
            self._sync("#gpus", GpuPanel, "index", [g["index"] for g in gpus], state)

    def _sync(self, container_id: str, panel_class: type, key: str, keys: list, state: ServiceState) -> bool:
        """Draw the container's panels, one per key (a model, a GPU); False when the set changed and new
        panels are being built (the rebuild draws them)."""
        panels = list(self.query_one(container_id).query(panel_class))
        if [getattr(p, key) for p in panels] != keys:
            self._rebuilding = True
            self.call_later(self._rebuild, container_id, panel_class, keys)
            return False
        for panel in panels:
            panel.show(state)
        return True

    async def _rebuild(self, container_id: str, panel_class: type, keys: list) -> None:
        """New panels when the set changed (the first snapshot, a model loaded or unloaded, a GPU lost)."""
        container = self.query_one(container_id, Vertical)
        container.set_class(len(keys) > 1, "-several")
        await container.remove_children()
        await container.mount_all(panel_class(k) for k in keys)
        self._rebuilding = False
        self.show_state(self.app.state)
