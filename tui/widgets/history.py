"""A history graph: one column per sample (1 s each), newest on the right, as tall as the widget.

Unlike textual's Sparkline (which stretches the data to the width and scales min..max), a column
here is always one second, so graphs side by side line up in time, and the scale starts at zero
with a fixed or floored top, so a flat line of noise does not look like a spike.
"""

from __future__ import annotations

from collections.abc import Sequence

from textual.content import Content
from textual.widget import Widget

LEVELS = " ▁▂▃▄▅▆▇█"
UNLAID_POINTS = 240


def columns(values: Sequence[float | None], rows: int, top: float) -> list[list[str]]:
    """Each value as `rows` characters from bottom to top; None (no sample) is a blank column."""
    out = []
    for value in values:
        if value is None:
            out.append([" "] * rows)
            continue
        eighths = round(min(max(value / top, 0.0), 1.0) * rows * 8) if top > 0 else 0
        if value > 0 and eighths == 0:
            eighths = 1  # something happened: show it, however small
        out.append([LEVELS[min(8, max(0, eighths - row * 8))] for row in range(rows)])
    return out


class History(Widget):
    DEFAULT_CSS = """
    History { height: 1; width: 1fr; color: $accent; }
    """

    def __init__(self, maximum: float | None = None, floor: float = 1.0, *,
                 id: str | None = None, classes: str | None = None):
        """`maximum`: a fixed top (100 for percentages); else the largest value shown, at least `floor`."""
        super().__init__(id=id, classes=classes)
        self.maximum = maximum
        self.floor = floor
        self.values: list[float | None] = []

    @property
    def points(self) -> int:
        """How many samples fit (callers fetch no more); before the first layout, enough for a wide terminal."""
        return self.size.width or UNLAID_POINTS

    def set(self, values: Sequence[float | None]) -> None:
        values = list(values)
        if values != self.values:
            self.values = values
            self.refresh()

    def top(self, visible: Sequence[float | None]) -> float:
        if self.maximum is not None:
            return self.maximum
        return max([self.floor, *(v for v in visible if v is not None)])

    def render(self) -> Content:
        width, rows = self.size.width, max(1, self.size.height)
        values = self.values[-width:]
        padded = [None] * (width - len(values)) + values
        grid = columns(padded, rows, self.top(values))
        lines = ["".join(column[row] for column in grid) for row in reversed(range(rows))]
        return Content("\n".join(lines))
