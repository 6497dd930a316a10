"""What the TUI knows about the service: the connection, the latest snapshot, its history, the running task.

The app owns one ServiceState and updates it from the connection worker's messages; screens read it
when they are shown and each time it changes while they are shown.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice

HISTORY_LEN = 900  # 15 minutes at the service's 1 Hz: what /v1/history keeps
STALE_AFTER_S = 5.0  # the service sends a snapshot every second; this long without one is worth saying

Series = Callable[[dict], "float | None"]


@dataclass
class Connection:
    state: str = "connecting"  # connecting | connected | disconnected
    message: str = ""  # why we are disconnected, with what to do about it
    retry_at: float | None = None  # monotonic time of the next attempt


class ServiceState:
    def __init__(self, history_len: int = HISTORY_LEN):
        self.connection = Connection()
        self.snapshots: deque[dict] = deque(maxlen=history_len)
        self.task: dict | None = None  # the latest load/pull/import we heard of, running or finished
        self.received_at: float | None = None  # monotonic time of the latest snapshot

    @property
    def latest(self) -> dict | None:
        return self.snapshots[-1] if self.snapshots else None

    def now(self) -> float:
        """The service's clock: the latest snapshot's time, else ours (see tui.format)."""
        latest = self.latest
        return latest["time"] if latest and latest.get("time") else time.time()

    def connected(self, history: list[dict]) -> None:
        self.connection = Connection("connected")
        self.snapshots.clear()
        self.snapshots.extend(history)
        if history:
            self.received_at = time.monotonic()
            self._take_task(history[-1])

    def add_snapshot(self, snapshot: dict) -> None:
        self.connection = Connection("connected")
        if self.snapshots and self.snapshots[-1].get("time") == snapshot.get("time"):
            self.snapshots[-1] = snapshot  # sent again (a reconnect's first event): not a new point in time
        else:
            self.snapshots.append(snapshot)
        self.received_at = time.monotonic()
        self._take_task(snapshot)

    def silent_for(self) -> float:
        """Seconds since the latest snapshot arrived (0 before the first)."""
        return 0.0 if self.received_at is None else time.monotonic() - self.received_at

    def stale(self) -> bool:
        return self.silent_for() > STALE_AFTER_S

    def disconnected(self, message: str, retry_in_s: float) -> None:
        self.connection = Connection("disconnected", message, time.monotonic() + retry_in_s)

    def update_task(self, task: dict) -> None:
        self.task = task

    def _take_task(self, snapshot: dict) -> None:
        # A snapshot names the running task; progress events may be newer, so they win for the same id.
        task = (snapshot.get("service") or {}).get("task")
        if task and (self.task is None or self.task.get("id") != task.get("id") or self.task.get("state") == "running"):
            self.task = task

    def series(self, value: Series, points: int) -> list[float | None]:
        """One number from each of the last `points` snapshots, oldest first; None where it is missing."""
        start = max(0, len(self.snapshots) - points)
        out = []
        for snapshot in islice(self.snapshots, start, None):
            try:
                out.append(value(snapshot))
            except (KeyError, IndexError, TypeError, ZeroDivisionError):  # a GPU or field missing back then
                out.append(None)
        return out
