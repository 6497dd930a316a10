"""Fan-out of live events (snapshots, task progress) to every control-socket subscriber.

Each subscriber has a bounded queue; a slow one loses its oldest events rather than holding
memory or the publisher back.
"""

import asyncio
from collections.abc import AsyncIterator


class EventHub:
    def __init__(self, queue_size: int = 64):
        self._queues: set[asyncio.Queue] = set()
        self._queue_size = queue_size
        self._closed = False

    def publish(self, event: str, data: dict) -> None:
        """Call on the event loop."""
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait((event, data))

    def close(self) -> None:
        """End every subscription (at shutdown, so open event streams do not hold the server up)."""
        self._closed = True
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)

    async def subscribe(self) -> AsyncIterator[tuple[str, dict]]:
        queue: asyncio.Queue = asyncio.Queue(self._queue_size)
        self._queues.add(queue)
        try:
            while not self._closed:
                item = await queue.get()
                if item is None:
                    return
                yield item
        finally:
            self._queues.discard(queue)
