"""A one-line gauge: `label ██████░░░░ text`, coloured by how close the value is to its limit.

Colours are theme variables ($success, $warning, $error, $accent), so the gauge reads on dark and
light themes alike; the filled and empty parts also differ in glyph, so it reads without colour.
"""

from __future__ import annotations

from textual.content import Content
from textual.widget import Widget

EIGHTHS = " ▏▎▍▌▋▊▉"  # partial blocks: the bar moves in 1/8-cell steps, so small changes show
FULL, EMPTY = "█", "░"
LEVEL_STYLES = {"neutral": "$accent", "ok": "$success", "warn": "$warning", "critical": "$error"}
TEXT_STYLES = {"warn": "$text-warning", "critical": "$text-error"}


def level_for(fraction: float | None, warn_at: float | None, critical_at: float | None) -> str:
    """'neutral' for gauges without thresholds (high GPU utilisation is good), else ok / warn / critical."""
    if fraction is None or (warn_at is None and critical_at is None):
        return "neutral"
    if critical_at is not None and fraction >= critical_at:
        return "critical"
    if warn_at is not None and fraction >= warn_at:
        return "warn"
    return "ok"


def bar(fraction: float | None, width: int) -> tuple[str, str]:
    """(filled, empty) strings that together are `width` cells."""
    if width <= 0:
        return "", ""
    if fraction is None:
        return "", EMPTY * width
    eighths = round(min(max(fraction, 0.0), 1.0) * width * 8)
    full, part = divmod(eighths, 8)
    filled = FULL * full + (EIGHTHS[part] if part else "")
    return filled, EMPTY * (width - len(filled))


class Gauge(Widget):
    DEFAULT_CSS = """
    Gauge { height: 1; width: 1fr; }
    """

    def __init__(self, label: str, *, label_width: int = 7, warn_at: float | None = None,
                 critical_at: float | None = None, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.label = label
        self.label_width = label_width
        self.warn_at = warn_at
        self.critical_at = critical_at
        self.fraction: float | None = None
        self.text = "—"
        self.level = "neutral"

    def set(self, fraction: float | None, text: str, level: str | None = None) -> None:
        """Show `fraction` (0..1, None: unknown) with `text`; the level comes from the thresholds unless given."""
        level = level or level_for(fraction, self.warn_at, self.critical_at)
        if (fraction, text, level) != (self.fraction, self.text, self.level):
            self.fraction, self.text, self.level = fraction, text, level
            self.refresh()

    def render(self) -> Content:
        width = self.size.width
        label = self.label.ljust(self.label_width)[: self.label_width]
        text = self.text
        bar_width = max(0, width - len(label) - len(text) - 2)
        if bar_width < 4:  # too narrow for a meaningful bar: the number alone says more
            bar_width, text = 0, text[: max(0, width - len(label) - 1)]
        filled, empty = bar(self.fraction, bar_width)
        style = LEVEL_STYLES[self.level]
        return Content.assemble(
            (label, "bold"), " ", (filled, style), (empty, "$foreground-disabled"), " " if bar_width else "",
            (text, TEXT_STYLES.get(self.level, "")),
        )
