"""Sections of a long measurement run under one time budget: each guarded, so one that fails or runs
out of time is recorded and the next still runs.

A section gets what is left of the budget (less a reserve for writing the results), or its own cap
if smaller; past it, SIGALRM raises SectionTimeout inside it. A section with too little time left
is skipped. Every outcome lands in `records` as it happens, and `after_each` (saving the results so
far, say) runs after every section.
"""

import gc
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass


class SectionTimeout(Exception):
    pass


@dataclass
class SectionRecord:
    name: str
    status: str  # "ok", "failed", "timed out" or "skipped"
    seconds: float
    error: str | None = None


class Sections:
    def __init__(self, budget_s: float, reserve_s: float = 10.0, min_s: float = 5.0,
                 after_each: Callable[[], None] = lambda: None, on_free: Callable[[], None] = gc.collect):
        self.deadline = time.monotonic() + budget_s - reserve_s
        self.min_s = min_s
        self.after_each = after_each
        self.on_free = on_free  # frees what a section left behind (device memory), whatever its outcome
        self.records: list[SectionRecord] = []

    @property
    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, section: Callable[[], object], cap_s: float | None = None) -> bool:
        """Runs section(); True when it finished."""
        if self.left_s < self.min_s:
            self._record(SectionRecord(name, "skipped", 0.0, f"{max(self.left_s, 0):.0f} s of the budget left"))
            return False
        allowed = min(self.left_s, cap_s if cap_s is not None else self.left_s)
        start = time.monotonic()
        previous = signal.signal(signal.SIGALRM, _raise_timeout)
        signal.setitimer(signal.ITIMER_REAL, allowed)
        try:
            try:
                section()
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)  # before any handler below runs
            record = SectionRecord(name, "ok", 0.0)
        except SectionTimeout:
            record = SectionRecord(name, "timed out", 0.0, f"stopped after its {allowed:.0f} s")
        except Exception as e:  # reported, and the run goes on
            traceback.print_exc()
            record = SectionRecord(name, "failed", 0.0, f"{type(e).__name__}: {e}")
        finally:
            signal.signal(signal.SIGALRM, previous)
        self.on_free()
        record.seconds = round(time.monotonic() - start, 1)
        self._record(record)
        return record.status == "ok"

    def _record(self, record: SectionRecord) -> None:
        self.records.append(record)
        detail = f" ({record.error})" if record.error else ""
        print(f"[{record.status}] {record.name}: {record.seconds:.1f} s{detail}", flush=True)
        self.after_each()

    def as_json(self) -> list[dict]:
        return [asdict(r) for r in self.records]


def _raise_timeout(signum, frame):
    raise SectionTimeout()
