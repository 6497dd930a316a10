"""Usage counting behind the key store (appliance/usage_ledger.py), through KeyStore, on real SQLite:
per-day totals, flushed and unflushed counts merged, the background flush, and what a crash loses."""

import signal
import sqlite3
import subprocess
import sys
import time

from appliance.keys import KeyStore


def test_usage_is_counted_per_day_and_survives_reopening(tmp_path, clock):
    path = tmp_path / "keys.db"
    with KeyStore(path, clock=clock.monotonic, now=clock.now) as s:
        record, _ = s.create("a")
        s.record_usage(record.id, 10, 5)
        s.record_usage(record.id, 20, 7)
        clock.advance(86400)
        s.record_usage(record.id, 1, 1)
        unflushed = s.usage(record.id)
    with KeyStore(path, clock=clock.monotonic, now=clock.now) as s:
        days = s.usage(record.id)
        assert [(d.day.isoformat(), d.requests, d.prompt_tokens, d.completion_tokens) for d in days] == [
            ("2026-03-14", 2, 30, 12),
            ("2026-03-15", 1, 1, 1),
        ]
        assert days == unflushed
        assert s.get(record.id).last_used_at == clock.now()
        assert [d.day.isoformat() for d in s.usage(record.id, days=1)] == ["2026-03-15"]


def test_usage_today_of_every_key_merges_flushed_and_unflushed_counts(tmp_path, clock):
    with KeyStore(tmp_path / "keys.db", clock=clock.monotonic, now=clock.now) as s:
        a, _ = s.create("a")
        b, _ = s.create("b")
        idle, _ = s.create("idle")
        s.record_usage(a.id, 100, 1)  # yesterday: not today's
        clock.advance(86400)
        s.record_usage(a.id, 10, 5)
        s.flush()
        s.record_usage(a.id, 20, 7)  # still in memory
        s.record_usage(b.id, 3, 4)
        today = s.usage_today()
        assert {k: (u.day.isoformat(), u.requests, u.prompt_tokens, u.completion_tokens) for k, u in today.items()} == {
            a.id: ("2026-03-15", 2, 30, 12),
            b.id: ("2026-03-15", 1, 3, 4),
        }
        assert idle.id not in today


def test_background_thread_flushes_within_seconds(tmp_path):
    s = KeyStore(tmp_path / "keys.db", flush_interval_s=0.2)
    try:
        record, _ = s.create("a")
        s.record_usage(record.id, 3, 4)
        deadline = time.monotonic() + 5
        row = None
        while time.monotonic() < deadline and row is None:
            time.sleep(0.05)
            with sqlite3.connect(s.db_path) as other:
                row = other.execute("SELECT requests, prompt_tokens, completion_tokens FROM usage").fetchone()
        assert row == (1, 3, 4)
    finally:
        s.close()


CRASH_CHILD = """
import sys, time
from pathlib import Path
from appliance.keys import KeyStore
store = KeyStore(Path(sys.argv[1]))
key_id = sys.argv[2]
n = 0
while True:
    store.record_usage(key_id, 2, 3)
    n += 1
    print(n, time.monotonic(), flush=True)
    time.sleep(0.005)
"""


def test_crash_loses_at_most_a_few_seconds_and_never_corrupts(tmp_path):
    path = tmp_path / "keys.db"
    with KeyStore(path) as s:
        record, _ = s.create("a")
    child = subprocess.Popen(
        [sys.executable, "-c", CRASH_CHILD, str(path), record.id], stdout=subprocess.PIPE, text=True
    )
    progress: list[tuple[int, float]] = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < 5.0:
            line = child.stdout.readline()
            if not line:
                break
            n, t = line.split()
            progress.append((int(n), float(t)))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    killed_at = time.monotonic()
    # Drain what the child wrote before it died, so the last count is known.
    for line in child.stdout.read().splitlines():
        n, t = line.split()
        progress.append((int(n), float(t)))
    with KeyStore(path) as s:
        assert s.integrity() == "ok"
        saved = sum(d.requests for d in s.usage(record.id))
        assert sum(d.prompt_tokens for d in s.usage(record.id)) == 2 * saved  # whole requests only
    recorded = progress[-1][0]
    assert 0 < saved <= recorded
    # The moment the child had recorded `saved` requests: everything after it was lost.
    saved_at = next(t for n, t in progress if n >= saved)
    assert killed_at - saved_at <= 4.0, f"lost {recorded - saved} requests ({killed_at - saved_at:.1f} s)"
