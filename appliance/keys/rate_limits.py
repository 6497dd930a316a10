"""Per-key sliding one-minute windows for requests per minute and tokens per minute.

Memory only: the windows describe the last minute, so there is nothing worth keeping across a
restart. Timestamps come from a monotonic clock, immune to wall-clock jumps.
"""

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

WINDOW_S = 60.0


class RateLimited(Exception):
    def __init__(self, retry_after_s: float, message: str):
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.message = message


@dataclass
class _Window:
    """Admitted requests and recorded tokens of one key over the last minute."""

    requests: deque = field(default_factory=deque)  # timestamps
    tokens: deque = field(default_factory=deque)  # (timestamp, tokens)
    token_sum: int = 0

    def prune(self, now: float) -> None:
        while self.requests and self.requests[0] <= now - WINDOW_S:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= now - WINDOW_S:
            self.token_sum -= self.tokens.popleft()[1]

    def seconds_until_tokens_below(self, limit: int, now: float) -> float:
        remaining = self.token_sum
        for stamp, tokens in self.tokens:
            remaining -= tokens
            if remaining < limit:
                return max(stamp + WINDOW_S - now, 0.0)
        return WINDOW_S


class RateWindows:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}

    def admit(self, key_id: str, rpm_limit: int | None, tpm_limit: int | None) -> None:
        """Count one request, or raise RateLimited if the key's last minute is already full.

        Requests count when admitted, so a burst cannot slip past the limit; tokens count when
        the request finishes (add_tokens), as only then are they known.
        """
        now = self._clock()
        with self._lock:
            window = self._windows.setdefault(key_id, _Window())
            window.prune(now)
            if rpm_limit is not None and len(window.requests) >= rpm_limit:
                wait = window.requests[0] + WINDOW_S - now if window.requests else WINDOW_S
                raise RateLimited(wait, f"rate limit: {rpm_limit} requests per minute for key {key_id}")
            if tpm_limit is not None and window.token_sum >= tpm_limit:
                raise RateLimited(
                    window.seconds_until_tokens_below(tpm_limit, now),
                    f"rate limit: {tpm_limit} tokens per minute for key {key_id}",
                )
            window.requests.append(now)

    def add_tokens(self, key_id: str, tokens: int) -> None:
        now = self._clock()
        with self._lock:
            window = self._windows.setdefault(key_id, _Window())
            window.prune(now)
            window.tokens.append((now, tokens))
            window.token_sum += tokens


def period_bounds(period: str, now: datetime) -> tuple[date, datetime]:
    """First day of the budget period ('day' or 'month', UTC) containing `now`, and when it ends."""
    today = now.astimezone(timezone.utc).date()
    if period == "day":
        start = today
        end = start + timedelta(days=1)
    else:
        start = today.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
    return start, datetime(end.year, end.month, end.day, tzinfo=timezone.utc)
