"""The lock-out: a client address that fails authentication too often is refused for a while.

Past `auth_failures_per_minute` wrong or malformed keys within a minute, the address gets 429
with Retry-After for `auth_lockout_s`, whatever key it sends, while other addresses are served
as before. An IPv6 client counts by its /64 (one host is usually given a whole /64), an IPv4
client by its address. Each lock-out is logged once and counted; refusals during it are neither
logged nor counted as failures, so a guessing client costs a dictionary lookup per request.

Memory only, used from the event loop alone; at most MAX_TRACKED addresses are remembered (the
least recently failing are forgotten first), so a spray from many addresses cannot grow it.

In a fleet (keys in PostgreSQL) each failure is also reported to the key store's shared lock-outs,
which count every box's failures: an address over the limit on the fleet's count is refused on
every box within a flush interval (keys/shared_lockouts.py). A fleet's gateway is exempt
(set_exempt, by `fleet join`): smg does not pass the client's address
on, so every client behind it arrives from the gateway's address, and locking that out would lock
out every client of the fleet for one client's wrong keys.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from appliance.ops.metrics import Metrics

log = logging.getLogger("appliance.auth")
WINDOW_S = 60.0
MAX_TRACKED = 100_000


def client_key(address: str | None) -> str:
    """What a lock-out applies to: the IPv4 address, or the IPv6 address's /64."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class AuthLockout:
    def __init__(self, failures_per_minute: int, lockout_s: float, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.monotonic, max_tracked: int = MAX_TRACKED, shared=None):
        self.failures_per_minute = failures_per_minute
        self.lockout_s = lockout_s
        self.metrics = metrics
        self.clock = clock
        self.max_tracked = max_tracked
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()  # least recently failing first
        self._locked_until: dict[str, float] = {}
        self._exempt: frozenset[str] = frozenset()  # a fleet gateway's addresses
        self.shared = shared  # keys.shared_lockouts.SharedLockouts in a fleet, else None

    def set_exempt(self, addresses) -> None:
        """Never lock these addresses out (a fleet gateway standing for many clients); () ends it."""
        self._exempt = frozenset(client_key(a) for a in addresses)
        for key in self._exempt:
            self._locked_until.pop(key, None)
            self._failures.pop(key, None)

    def retry_after_s(self, address: str | None) -> float | None:
        """Seconds the address stays locked out, or None when it may try."""
        key = client_key(address)
        until = self._locked_until.get(key)
        if until is None:
            return self.shared.retry_after_s(key) if self.shared is not None and key not in self._exempt else None
        left = until - self.clock()
        if left <= 0:
            del self._locked_until[key]
            return None
        return left

    def failed(self, address: str | None) -> None:
        """Count one failed authentication; the one that reaches the limit starts the lock-out."""
        if self.metrics is not None:
            self.metrics.auth_failures.inc()
        key = client_key(address)
        if key in self._exempt:
            return
        if self.shared is not None:
            self.shared.failed(key, self.failures_per_minute, self.lockout_s)
        now = self.clock()
        failures = self._failures.pop(key, None) or deque()
        while failures and failures[0] <= now - WINDOW_S:
            failures.popleft()
        failures.append(now)
        if len(failures) < self.failures_per_minute:
            self._failures[key] = failures
            self._forget_oldest()
            return
        self._locked_until[key] = now + self.lockout_s
        if self.metrics is not None:
            self.metrics.auth_lockouts.inc()
        log.warning(json.dumps({"event": "lockout", "client": key, "failures": len(failures),
                                "window_s": WINDOW_S, "lockout_s": self.lockout_s}))

    def _forget_oldest(self) -> None:
        while len(self._failures) > self.max_tracked:
            self._failures.popitem(last=False)
        if len(self._locked_until) > self.max_tracked:
            now = self.clock()
            for key in [k for k, until in self._locked_until.items() if until <= now]:
                del self._locked_until[key]
