"""The service's cost figures (ops.cost's summary, as /v1/status and /v1/cost send it) in a few words.

Shared by `appliance status` and the TUI, so it imports nothing: plain strings from plain dicts.
"""

from __future__ import annotations

MISSING = "—"
SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥"}
WINDOW_NAMES = {"hour": "last hour", "today": "today", "30d": "30 days"}
NOT_PRICED = "no price: set gpu_cost_per_hour (and currency) in /etc/appliance/config.toml"


def money(value: float | None, currency: str) -> str:
    """$4.80, €0.012, 12.50 CHF: two decimals, three significant digits below a cent."""
    if value is None:
        return MISSING
    text = f"{value:,.2f}" if abs(value) >= 0.01 or value == 0 else f"{value:.2g}"
    symbol = SYMBOLS.get(currency)
    return f"{symbol}{text}" if symbol else f"{text} {currency}"


def per_million(value: float | None, currency: str, what: str) -> str:
    return f"{money(value, currency)}/M {what}"


def window_text(window: dict, currency: str) -> str:
    """'$4.80 · busy 2% · $384/M out · $274/M in+out · embeddings $48.00/M tokens · 282× hosted'.

    A window has its billed time (busy is its share); a model's or a key's part of one has not.
    """
    parts = [money(window.get("cost"), currency)]
    if window.get("billed_s"):
        parts.append(f"busy {window['busy_s'] / window['billed_s']:.0%}")
    generation = (window.get("kinds") or {}).get("generation")
    if generation:
        parts += [per_million(generation["per_million_output"], currency, "out"),
                  per_million(generation["per_million_tokens"], currency, "in+out")]
    embedding = (window.get("kinds") or {}).get("embedding")
    if embedding:
        parts.append(f"embeddings {per_million(embedding['per_million_tokens'], currency, 'tokens')}")
    ratio = window.get("vs_reference")
    if ratio is not None:
        parts.append(f"{ratio:.1f}× hosted" if ratio < 10 else f"{ratio:,.0f}× hosted")
    return " · ".join(parts)


def key_text(figures: dict | None, currency: str) -> str:
    """A key's share: '$3.84 · $384/M out'."""
    if not figures or figures.get("cost") is None:
        return MISSING
    return f"{money(figures['cost'], currency)} · {per_million(figures['per_million_output'], currency, 'out')}"
