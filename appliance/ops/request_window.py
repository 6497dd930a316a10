"""Recent request latencies and counts over the last minute: the percentiles the dashboard shows."""

import time
from collections import deque

WINDOW_S = 60.0  # latency percentiles and request rate cover this much recent time


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


class RequestWindow:
    """Recent request latencies and counts, fed by the service as requests finish."""

    def __init__(self, window_s: float = WINDOW_S, max_samples: int = 20_000):
        self.window_s = window_s
        self._ttft: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._itl: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._finished: deque[float] = deque(maxlen=max_samples)
        self.requests_total = 0
        self.errors_total = 0  # server errors (5xx): what on-call looks at
        self.rejected_total = 0  # refusals (4xx): bad keys, invalid bodies, rate limits

    def observe(self, ttft_s: float | None, gaps_s: list[float]) -> None:
        now = time.monotonic()
        if ttft_s is not None:
            self._ttft.append((now, ttft_s))
        self._itl.extend((now, gap) for gap in gaps_s)

    def count_response(self, status: int) -> None:
        """One API request answered; 499 (its client left) is neither refused nor failed."""
        self.requests_total += 1
        self._finished.append(time.monotonic())
        if status >= 500:
            self.errors_total += 1
        elif 400 <= status < 499:
            self.rejected_total += 1

    def summary(self) -> dict:
        since = time.monotonic() - self.window_s
        ttft = sorted(v for t, v in self._ttft if t >= since)
        itl = sorted(v for t, v in self._itl if t >= since)
        recent = sum(1 for t in self._finished if t >= since)
        return {
            "ttft_s": {"p50": percentile(ttft, 0.50), "p99": percentile(ttft, 0.99)},
            "itl_s": {"p50": percentile(itl, 0.50), "p99": percentile(itl, 0.99)},
            "requests_per_s": recent / self.window_s,
            "requests_total": self.requests_total,
            "errors": self.errors_total,
            "rejected": self.rejected_total,
        }
