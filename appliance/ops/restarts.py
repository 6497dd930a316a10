"""Unclean ends of the service counted across restarts: a crash, kill -9, or the watchdog's SIGABRT.

A clean stop (SIGTERM, the drain, exit) clears the run marker; a start that finds it still set
counts one unclean restart, kept in the state dir so the count survives the restart it counts.
"""

import json
from pathlib import Path

from prometheus_client.core import CounterMetricFamily


class RunMarker:
    def __init__(self, state_dir: Path):
        self.path = state_dir / "run-state.json"
        self.unclean_restarts = 0

    def start(self) -> None:
        state = self._read()
        self.unclean_restarts = state.get("unclean_restarts", 0) + (1 if state.get("running") else 0)
        self._write(running=True)

    def stop(self) -> None:
        self._write(running=False)

    def _read(self) -> dict:
        try:
            state = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _write(self, running: bool) -> None:
        try:
            self.path.write_text(json.dumps({"running": running, "unclean_restarts": self.unclean_restarts}))
        except OSError:  # a read-only or missing state dir must not stop the service
            pass

    def collect(self):
        yield CounterMetricFamily("appliance_unclean_restarts",
                                  "Starts that found the last run ended without a clean stop (crash, kill, watchdog).",
                                  value=self.unclean_restarts)
