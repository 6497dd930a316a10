"""Cost per million tokens: the box's hourly price shared out over the work it did, by measured busy time.

The box is billed by the hour whether it works or not, so a window's cost is gpu_cost_per_hour × the
window's hours (idle time included, as the bill has it, from the first time the service ran). That
cost is shared out by busy time: at each instant the requests in flight split the instant evenly
(BusyClock), so their shares add up to the time the box was busy. A model's, a key's or a kind's
cost is its share of the busy time × the window's cost; divided by its tokens, per million.

Kinds are kept apart: "generation" (chat and completions) and "embedding" (prompt tokens only).
Windows: the last hour (minutes in memory, so since the start when the service restarted within it),
today and the last 30 days (UTC days, as key usage counts them; kept in cost.db beside keys.db).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily

WINDOWS = ("hour", "today", "30d")
KINDS = ("generation", "embedding")
DAYS_KEPT = 30
FLUSH_EVERY_S = 10.0  # what a crash may lose of today's figures


class BusyClock:
    """Busy time shared among the requests in flight: k requests in flight each get 1/k of every second.

    A virtual clock advances by dt/k over each stretch with k requests in flight (as in fair
    queueing); a request's share is the virtual time between its start and its end.
    """

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._in_flight = 0
        self._virtual = 0.0
        self._last = clock()
        self._guard = threading.Lock()  # embeddings end on the event loop, generation too; tests use threads

    def start(self) -> float:
        """A request began work; keep the token for end()."""
        with self._guard:
            self._advance()
            self._in_flight += 1
            return self._virtual

    def end(self, token: float) -> float:
        """The request's share of busy seconds since start()."""
        with self._guard:
            self._advance()
            self._in_flight -= 1
            return self._virtual - token

    def _advance(self) -> None:
        now = self._clock()
        if self._in_flight:
            self._virtual += (now - self._last) / self._in_flight
        self._last = now


@dataclass
class Usage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    busy_s: float = 0.0

    def add(self, other: Usage) -> None:
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.busy_s += other.busy_s


Scope = tuple[str, str, str]  # (model, key id or "", kind)


class CostLedger:
    """Tokens and busy seconds per (model, key, kind): per minute for the last hour, per UTC day for 30 days."""

    def __init__(self, path: Path | None, gpu_cost_per_hour: float | None, currency: str = "USD",
                 reference_price_per_million: float | None = None, clock=time.time):
        self.gpu_cost_per_hour = gpu_cost_per_hour
        self.currency = currency
        self.reference_price_per_million = reference_price_per_million
        self._clock = clock
        self._guard = threading.Lock()
        self._minutes: dict[int, dict[Scope, Usage]] = defaultdict(lambda: defaultdict(Usage))
        self._days: dict[str, dict[Scope, Usage]] = defaultdict(lambda: defaultdict(Usage))
        self._dirty: set[str] = set()
        self.started = clock()
        self._db = _open(path) if path is not None else None
        self.first_seen = self._load() if self._db is not None else self.started
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    # -- recording ------------------------------------------------------------------------------
    def record(self, model: str, key_id: str | None, kind: str, prompt_tokens: int, completion_tokens: int,
               busy_s: float) -> None:
        now = self._clock()
        usage = Usage(1, prompt_tokens, completion_tokens, busy_s)
        scope = (model, key_id or "", kind)
        day = _day(now)
        with self._guard:
            minute = int(now // 60)
            for old in [m for m in self._minutes if m < minute - 59]:
                del self._minutes[old]
            self._minutes[minute][scope].add(usage)
            self._days[day][scope].add(usage)
            self._dirty.add(day)

    # -- figures --------------------------------------------------------------------------------
    def summary(self, detail: bool = False) -> dict:
        """Every window's cost and cost per million tokens, overall and per kind; with `detail`, per model and key."""
        now = self._clock()
        with self._guard:
            windows = {name: (*self._window(name, now), self._copied(name)) for name in WINDOWS}
        price, reference = self.gpu_cost_per_hour, self.reference_price_per_million
        out = {"configured": price is not None, "currency": self.currency, "gpu_cost_per_hour": price,
               "reference_price_per_million": reference,
               "break_even_tokens_per_day": price * 24 / reference * 1e6 if price and reference else None,
               "windows": {}}
        models: dict[str, dict] = defaultdict(dict)
        keys: dict[str, dict] = defaultdict(dict)
        for name, (start, billed_s, rows) in windows.items():
            cost = price * billed_s / 3600 if price is not None else None
            busy = sum(u.busy_s for _, u in rows)
            window = {"since": start, "billed_s": billed_s, **_figures(_total(rows), cost, busy),
                      "cost": cost, "kinds": _by(rows, KIND, cost, busy)}  # idle or not, the whole bill
            window["vs_reference"] = (window["per_million_tokens"] / reference
                                      if window["per_million_tokens"] is not None and reference else None)
            out["windows"][name] = window
            if not detail:
                continue
            for model, figures in _by(rows, MODEL, cost, busy).items():
                figures["kinds"] = _by([r for r in rows if r[0][MODEL] == model], KIND, cost, busy)
                models[model][name] = figures
            for key, figures in _by([r for r in rows if r[0][KEY]], KEY, cost, busy).items():
                keys[key][name] = figures
        if detail:
            out["models"], out["keys"] = dict(models), dict(keys)
        return out

    def _window(self, name: str, now: float) -> tuple[float, float]:
        """(start, billed seconds). The hour's figures are in memory since the start; the days' since first_seen."""
        if name == "hour":
            start = max(_minute_start(now), self.started)
        else:
            midnight = datetime.fromtimestamp(now, timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
            back = 0 if name == "today" else DAYS_KEPT - 1
            start = max((midnight - timedelta(days=back)).timestamp(), self.first_seen)
        return start, max(0.0, now - start)

    def _copied(self, name: str) -> list[tuple[Scope, Usage]]:
        """The window's (scope, usage) entries, copied (the caller works on them without the lock)."""
        now = self._clock()
        if name == "hour":
            first = int(_minute_start(now) // 60)
            buckets = [scopes for minute, scopes in self._minutes.items() if minute >= first]
        else:
            first_day = _day(now - (0 if name == "today" else (DAYS_KEPT - 1) * 86400))
            buckets = [scopes for day, scopes in self._days.items() if day >= first_day]
        return [(scope, Usage(**vars(u))) for scopes in buckets for scope, u in scopes.items()]

    # -- persistence ----------------------------------------------------------------------------
    def _load(self) -> float:
        db = self._db
        with db:
            db.execute("DELETE FROM cost_usage WHERE day < ?", (_day(self.started - DAYS_KEPT * 86400),))
        for day, model, key, kind, requests, prompt, completion, busy in db.execute(
                "SELECT day, model, key_id, kind, requests, prompt_tokens, completion_tokens, busy_s FROM cost_usage"):
            self._days[day][(model, key, kind)] = Usage(requests, prompt, completion, busy)
        row = db.execute("SELECT value FROM cost_meta WHERE name = 'first_seen'").fetchone()
        if row is not None:
            return float(row[0])
        with db:
            db.execute("INSERT INTO cost_meta (name, value) VALUES ('first_seen', ?)", (self.started,))
        return self.started

    def flush(self) -> None:
        """Write the days that changed since the last flush (the whole day's rows: they are totals)."""
        if self._db is None:
            return
        with self._guard:
            rows = [(day, *scope, u.requests, u.prompt_tokens, u.completion_tokens, u.busy_s)
                    for day in self._dirty for scope, u in self._days[day].items()]
            self._dirty.clear()
        with self._db:
            self._db.executemany(
                "INSERT INTO cost_usage (day, model, key_id, kind, requests, prompt_tokens, completion_tokens, busy_s)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (day, model, key_id, kind) DO UPDATE SET"
                " requests = excluded.requests, prompt_tokens = excluded.prompt_tokens,"
                " completion_tokens = excluded.completion_tokens, busy_s = excluded.busy_s", rows)

    def start_flushing(self, every_s: float = FLUSH_EVERY_S) -> None:
        """Flush every `every_s` in a thread (SQLite off the event loop) until close()."""
        def run():
            while not self._stop.wait(every_s):
                self.flush()

        self._flusher = threading.Thread(target=run, name="cost ledger flush", daemon=True)
        self._flusher.start()

    def close(self) -> None:
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
        self.flush()
        if self._db is not None:
            self._db.close()
            self._db = None


class CostCollector:
    """appliance_cost* gauges from the ledger, computed when Prometheus scrapes."""

    TOKENS = (("output", "per_million_output"), ("total", "per_million_tokens"))  # label value, figure

    def __init__(self, ledger: CostLedger):
        self.ledger = ledger

    def collect(self):
        summary = self.ledger.summary(detail=True)
        currency = summary["currency"]
        price = GaugeMetricFamily("appliance_gpu_cost_per_hour", "What the box costs an hour (gpu_cost_per_hour).",
                                  labels=["currency"])
        if summary["configured"]:
            price.add_metric([currency], summary["gpu_cost_per_hour"])
        cost = GaugeMetricFamily("appliance_cost", "What the box cost over the window, idle time included.",
                                 labels=["window", "currency"])
        busy = GaugeMetricFamily("appliance_busy_ratio", "The part of the window the box was busy with requests.",
                                 labels=["window"])
        per_million = GaugeMetricFamily(
            "appliance_cost_per_million_tokens", "Cost per million output tokens, or tokens in + out, over the window.",
            labels=["window", "kind", "tokens", "currency"])
        per_model = GaugeMetricFamily(
            "appliance_model_cost_per_million_tokens", "A model's cost per million tokens over the window.",
            labels=["window", "model_name", "kind", "tokens", "currency"])
        per_key = GaugeMetricFamily("appliance_key_cost", "A key's share of the window's cost (by busy time).",
                                    labels=["window", "key_id", "currency"])
        ratio = GaugeMetricFamily("appliance_cost_vs_reference_ratio",
                                  "Cost per million tokens over reference_price_per_million (a hosted API's price).",
                                  labels=["window"])
        for name, window in summary["windows"].items():
            if window["cost"] is not None:
                cost.add_metric([name, currency], window["cost"])
            if window["billed_s"] > 0:
                busy.add_metric([name], window["busy_s"] / window["billed_s"])
            if window["vs_reference"] is not None:
                ratio.add_metric([name], window["vs_reference"])
            for kind, figures in window["kinds"].items():
                _add_per_million(per_million, [name, kind], figures, currency)
        for model, windows in summary["models"].items():
            for name, figures in windows.items():
                for kind, kind_figures in figures["kinds"].items():
                    _add_per_million(per_model, [name, model, kind], kind_figures, currency)
        for key, windows in summary["keys"].items():
            for name, figures in windows.items():
                if figures["cost"] is not None:
                    per_key.add_metric([name, key, currency], figures["cost"])
        yield from (price, cost, busy, per_million, per_model, per_key, ratio)


def _add_per_million(family: GaugeMetricFamily, labels: list[str], figures: dict, currency: str) -> None:
    for tokens, figure in CostCollector.TOKENS:
        if figures[figure] is not None:
            family.add_metric([*labels, tokens, currency], figures[figure])


def _figures(usage: Usage, window_cost: float | None, busy_s: float) -> dict:
    """A part of a window's traffic and its share of the cost (by busy time)."""
    cost = window_cost * usage.busy_s / busy_s if window_cost is not None and busy_s > 0 else None
    tokens = usage.prompt_tokens + usage.completion_tokens
    return {**vars(usage), "cost": cost,
            "per_million_output": cost / usage.completion_tokens * 1e6 if cost is not None and usage.completion_tokens else None,
            "per_million_tokens": cost / tokens * 1e6 if cost is not None and tokens else None}


MODEL, KEY, KIND = range(3)  # positions in a Scope


def _total(rows: list[tuple[Scope, Usage]]) -> Usage:
    total = Usage()
    for _, usage in rows:
        total.add(usage)
    return total


def _by(rows: list[tuple[Scope, Usage]], part: int, window_cost: float | None, busy_s: float) -> dict[str, dict]:
    """The figures of each model, key or kind in the rows."""
    groups: dict[str, Usage] = defaultdict(Usage)
    for scope, usage in rows:
        groups[scope[part]].add(usage)
    return {name: _figures(usage, window_cost, busy_s) for name, usage in groups.items()}


def _minute_start(now: float) -> float:
    """The start of the last hour's first minute: 60 one-minute buckets, the current one partial."""
    return (int(now // 60) - 59) * 60.0


def _day(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).date().isoformat()


def _open(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False)  # the flush thread writes, close() on the loop
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS cost_usage (day TEXT, model TEXT, key_id TEXT, kind TEXT, requests INTEGER,"
               " prompt_tokens INTEGER, completion_tokens INTEGER, busy_s REAL, PRIMARY KEY (day, model, key_id, kind))")
    db.execute("CREATE TABLE IF NOT EXISTS cost_meta (name TEXT PRIMARY KEY, value)")
    return db
