"""The audit log: one JSON line per change made through the control socket, with who made it.

Kept in <state_dir>/audit.log (mode 0640) and echoed to the service log, so journald has it too.
"""

import json
import logging
import os
import threading
from collections import deque
from datetime import datetime, timezone
from pathlib import Path

from appliance.control.peer import Peer

log = logging.getLogger("appliance.audit")


class AuditLog:
    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()

    def record(self, peer: Peer | None, action: str, target: str | None, details: dict | None = None) -> dict:
        entry = {
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "uid": peer.uid if peer else None,
            "user": peer.user if peer else None,
            "pid": peer.pid if peer else None,
            "action": action,
            "target": target,
            "details": details or {},
        }
        line = json.dumps(entry, ensure_ascii=False)
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            with os.fdopen(fd, "a") as f:
                f.write(line + "\n")
        log.info("audit: %s", line)
        return entry

    def recent(self, limit: int = 100) -> list[dict]:
        """The last `limit` entries, oldest first."""
        try:
            with open(self.path) as f:
                lines = deque(f, maxlen=limit)
        except FileNotFoundError:
            return []
        entries = []
        for line in lines:
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a crash mid-write
        return entries
