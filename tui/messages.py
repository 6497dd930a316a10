"""Messages that worker threads post to the UI (post_message is thread-safe, and a no-op once the app has gone).

Workers post rather than call_from_thread: that one waits for the UI thread, which may be shutting down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual.message import Message


class Answered(Message, bubble=False):
    """A short worker's answer from the service (or its ControlError): the screen calls `then(value)`."""

    def __init__(self, then: Callable[[Any], object], value: Any, group: str | None = None):
        super().__init__()
        self.then = then
        self.value = value
        self.group = group


class ServiceConnected(Message):
    """The service answered: `history` is its recent snapshots, oldest first, to fill the graphs."""

    def __init__(self, history: list[dict]):
        super().__init__()
        self.history = history


class SnapshotReceived(Message):
    def __init__(self, snapshot: dict):
        super().__init__()
        self.snapshot = snapshot


class TaskProgress(Message):
    """A load, pull or import moved on (or finished)."""

    def __init__(self, task: dict):
        super().__init__()
        self.task = task


class ServiceDisconnected(Message):
    """The service went away or refused us; the worker tries again in `retry_in_s`."""

    def __init__(self, message: str, retry_in_s: float):
        super().__init__()
        self.message = message
        self.retry_in_s = retry_in_s
