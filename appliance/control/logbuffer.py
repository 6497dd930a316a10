"""The service's recent log lines in memory, numbered, so the control socket can serve a tail.

journald keeps the full log; this is what the TUI follows without needing journal access.
"""

import logging
import threading
import time
import uuid
from collections import deque


class LogBuffer(logging.Handler):
    def __init__(self, capacity: int = 2000):
        super().__init__()
        self._lines: deque[dict] = deque(maxlen=capacity)
        self._seq = 0
        self.boot_id = uuid.uuid4().hex  # numbering restarts with the process: readers compare this
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
        except Exception:  # a bad format string must not break logging
            message = str(record.msg)
        with self._guard:
            self._seq += 1
            self._lines.append({"seq": self._seq, "time": record.created, "level": record.levelname.lower(),
                                "logger": record.name, "message": message})

    def since(self, after: int = 0, limit: int = 200) -> dict:
        """Lines numbered above `after` (the newest `limit` of them) and the number to ask from next."""
        with self._guard:
            lines = [line for line in self._lines if line["seq"] > after]
            newest = self._seq
        return {"lines": lines[-limit:], "next": newest, "boot_id": self.boot_id, "time": time.time()}
