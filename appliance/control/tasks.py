"""Long operations started over the control socket (model load, pull, import) and their progress.

A task runs on the event loop (its blocking parts in threads); its progress callback may be called
from any thread and is published to event subscribers as `progress` events.
"""

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field

from appliance.control.events import EventHub

log = logging.getLogger("appliance.tasks")

Progress = Callable[[dict], None]


@dataclass
class Task:
    id: str
    kind: str  # load, pull, import
    target: str
    user: str | None
    state: str = "running"  # running, done, failed
    stage: str = "starting"
    message: str = ""
    fraction: float | None = None
    bytes_done: int | None = None
    bytes_total: int | None = None
    error: str | None = None
    result: dict | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class Tasks:
    def __init__(self, hub: EventHub, keep: int = 50):
        self.hub = hub
        self._tasks: dict[str, Task] = {}
        self._ids = itertools.count(1)
        self._keep = keep
        self._running: set[asyncio.Task] = set()

    def start(self, kind: str, target: str, user: str | None, work: Callable[[Progress], Awaitable[dict | None]]) -> Task:
        """Run work(progress) in the background; returns the task at once."""
        task = Task(f"{kind}-{next(self._ids)}", kind, target, user)
        self._tasks[task.id] = task
        self._forget_old()
        loop = asyncio.get_running_loop()

        def progress(update: dict) -> None:
            loop.call_soon_threadsafe(self._update, task, update)

        async def run() -> None:
            try:
                task.result = await work(progress)
            except Exception as e:
                task.state, task.error = "failed", str(e) or type(e).__name__
                task.message = f"failed: {task.error}"
                log.warning("%s %s failed: %s", kind, target, task.error)
            else:
                task.state, task.stage, task.fraction, task.message = "done", "done", 1.0, "done"
            task.finished_at = time.time()
            self.hub.publish("progress", task.to_dict())

        running = asyncio.ensure_future(run())
        self._running.add(running)
        running.add_done_callback(self._running.discard)
        self.hub.publish("progress", task.to_dict())
        return task

    def _update(self, task: Task, update: dict) -> None:
        if task.state != "running":
            return
        for name in ("stage", "message", "fraction", "bytes_done", "bytes_total"):
            if name in update:
                setattr(task, name, update[name])
        if "fraction" not in update and update.get("bytes_total"):
            task.fraction = (update.get("bytes_done") or 0) / update["bytes_total"]
        self.hub.publish("progress", task.to_dict())

    def get(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def running(self, kind: str | None = None) -> Task | None:
        return next((t for t in self._tasks.values() if t.state == "running" and kind in (None, t.kind)), None)

    def _forget_old(self) -> None:
        finished = [t for t in self._tasks.values() if t.state != "running"]
        for task in finished[: max(0, len(self._tasks) - self._keep)]:
            del self._tasks[task.id]
