"""Whether this box is in a fleet: <state_dir>/fleet.json, written by join and removed by leave.

It holds the gateway's admin key (leave needs it to deregister the box), so it is written 0600
for the service's user alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

FILE_NAME = "fleet.json"


@dataclass
class Membership:
    gateway_url: str
    worker_url: str  # how the gateway reaches this box
    worker_id: str  # the gateway's id for it
    probe_key_id: str  # this box's fleet-probe key in the shared key store
    admin_key: str
    joined_at: str
    gateway_addresses: list[str]  # where the gateway's requests come from: exempt from lock-outs here

    def public(self) -> dict:
        """What status and the TUI show: everything but the admin key."""
        out = asdict(self)
        del out["admin_key"]
        return out


def resolve_addresses(url: str) -> list[str]:
    """The IP addresses a URL's host name stands for (the gateway's, as this box sees its connections)."""
    import socket
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(host, None)})
    except OSError:
        return []


def load_membership(state_dir: Path) -> Membership | None:
    try:
        return Membership(**json.loads((state_dir / FILE_NAME).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def save_membership(state_dir: Path, membership: Membership) -> None:
    path = state_dir / FILE_NAME
    tmp = path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(membership), f, indent=2)
    os.replace(tmp, path)


def forget_membership(state_dir: Path) -> None:
    (state_dir / FILE_NAME).unlink(missing_ok=True)
