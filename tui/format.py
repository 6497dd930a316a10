"""Numbers as an operator reads them: short, with units, and "—" where the service reports nothing.

Relative times ("3m ago") are measured against the service's clock (the latest snapshot's `time`),
not this terminal's, so they agree with what the service logged and stay fixed in snapshot tests.
"""

from __future__ import annotations

from datetime import datetime, timezone

MISSING = "—"


def number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return MISSING
    return f"{value:,.{digits}f}"


def count(value: float | None) -> str:
    """Large counts in a few characters, three significant digits: 950, 1.84k, 200k, 50M, 3.4G."""
    if value is None:
        return MISSING
    for divisor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= divisor:
            return f"{value / divisor:.3g}{suffix}"
    return f"{value:.0f}"


def rate(value: float | None) -> str:
    """Per-second rates: one decimal below 100, none above (the decimal is noise there)."""
    if value is None:
        return MISSING
    return f"{value:.1f}" if abs(value) < 100 else f"{value:,.0f}"


def percent(fraction: float | None) -> str:
    return MISSING if fraction is None else f"{fraction * 100:.0f}%"


def size(n_bytes: float | None) -> str:
    """Bytes in binary units, as nvidia-smi and df -h show them."""
    if n_bytes is None:
        return MISSING
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def size_pair(used: float | None, total: float | None) -> str:
    """'12.3/80.0 GiB': both in the total's unit, so the two numbers compare at a glance."""
    if used is None or total is None:
        return f"{size(used)} / {size(total)}"
    unit_total = size(total)
    unit = unit_total.split()[-1]
    scale = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}[unit]
    return f"{used / scale:.1f}/{total / scale:.1f} {unit}"


def latency(seconds: float | None) -> str:
    if seconds is None:
        return MISSING
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


def duration(seconds: float | None) -> str:
    """Uptime and ages: the two largest units ('3d 4h', '2h 05m', '4m 10s', '12s')."""
    if seconds is None:
        return MISSING
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def parse_time(value: str | float | None) -> float | None:
    """An ISO 8601 string or epoch seconds as epoch seconds; naive ISO times are UTC, as the service stores them."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def ago(value: str | float | None, now: float, never: str = "never") -> str:
    when = parse_time(value)
    if when is None:
        return never
    delta = now - when
    if delta < 0:
        return f"in {duration(-delta)}"
    return f"{duration(delta)} ago"


def day(value: str | float | None, missing: str = MISSING) -> str:
    """The UTC date of a time: the service's day boundaries (usage, budgets) are UTC too."""
    when = parse_time(value)
    if when is None:
        return missing
    return datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%d")


def clock(value: str | float | None) -> str:
    """HH:MM:SS in UTC, for log lines and health checks."""
    when = parse_time(value)
    if when is None:
        return MISSING
    return datetime.fromtimestamp(when, timezone.utc).strftime("%H:%M:%S")


def limit(value: int | None) -> str:
    """A key's limit: ∞ where there is none."""
    return "∞" if value is None else count(value)
