"""A log viewer, as lazydocker's or k9s's: one record per line in columns, colour by level, a filter, a level
toggle, and the whole record on Enter.

It takes the service's log lines (/v1/logs: time, level, logger, message) and the journal's lines in
the same shape (tui/unit_journal.py). A request line's JSON message becomes its columns: event,
status, model, key, and a short summary; other lines keep their text.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Static

from tui import format as fmt

# (title, width): the message takes what is left. Cells have no padding; the widths leave one space after.
COLUMNS = (("Time", 9), ("Level", 6), ("Event", 8), ("Status", 10), ("Model", 11), ("Key", 9), ("Message", None))
REQUEST_COLUMNS = ("Status", "Model", "Key")  # left out while no record shown has them (the journal's lines)
LEVELS = ("debug", "info", "warning", "error", "critical")
LEVEL_LABELS = {"debug": "DEBUG", "info": "INFO", "warning": "WARN", "error": "ERROR", "critical": "CRIT"}
# Rich styles (DataTable renders Rich text): named ANSI colours read on dark and light terminals.
LEVEL_STYLES = {"debug": "dim", "info": "", "warning": "yellow", "error": "bold red", "critical": "bold red reverse"}
SHOWN_FROM = ("debug", "info", "warning", "error")  # what the level toggle steps through: this level and above
KEEP = 2000


@dataclass
class LogRecord:
    time: float | None
    level: str
    event: str
    status: str
    model: str
    key: str
    message: str
    line: dict  # as it came, for the detail view
    details: dict | None  # the JSON message, parsed

    @property
    def text(self) -> str:
        """Everything the filter looks through."""
        return " ".join((self.level, self.event, self.status, self.model, self.key, self.message,
                         self.line.get("logger") or ""))


def log_record(line: dict) -> LogRecord:
    message = line.get("message") or ""
    level = (line.get("level") or "info").lower()
    details = None
    if message.startswith("{"):
        try:
            details = json.loads(message)
        except ValueError:
            details = None
    logger = (line.get("logger") or "").removeprefix("appliance.")
    if not isinstance(details, dict) or "event" not in details:
        return LogRecord(line.get("time"), level, logger, "", "", "", message.splitlines()[0] if message else "",
                         line, None)
    return LogRecord(line.get("time"), level, details["event"], str(details.get("status") or ""),
                     str(details.get("model") or ""), str(details.get("key_id") or ""), summary(details), line, details)


def summary(details: dict) -> str:
    """A request line in a few words: 'chat 12+34 tok 1.21 s length', or a refusal's path and reason."""
    if details["event"] == "request":
        time_s = details.get("total_time_s")
        parts = [details.get("endpoint") or "", f"{details.get('prompt_tokens', 0)}+{details.get('completion_tokens', 0)} tok",
                 f"{time_s:.2f} s" if isinstance(time_s, (int, float)) else "", details.get("finish_reason") or ""]
        return " ".join(p for p in parts if p)
    if details["event"] == "refused":
        return f"{details.get('method', '')} {details.get('path', '')}: {details.get('message', '')}".strip()
    return json.dumps(details)


def _of_a_request(record: LogRecord) -> bool:
    return bool(record.status or record.model or record.key)


class RecordScreen(ModalScreen[None]):
    """Enter on a record: all of it (the JSON pretty-printed), escape to go back."""

    BINDINGS = [Binding("escape,enter,q", "close", "Close the record")]

    def __init__(self, record: LogRecord):
        super().__init__()
        self.record = record

    def compose(self) -> ComposeResult:
        record = self.record
        with VerticalScroll(classes="dialog record") as dialog:
            dialog.border_title = f"{LEVEL_LABELS.get(record.level, record.level)} · {fmt.clock(record.time)} UTC"
            dialog.border_subtitle = "escape closes"
            body = json.dumps(record.details, indent=2, ensure_ascii=False) if record.details else record.line.get("message", "")
            extra = record.line.get("fields")
            yield Static(Content.assemble(("logger ", "bold"), record.line.get("logger") or fmt.MISSING), classes="hint")
            yield Static(Content(body))
            if extra:
                yield Static(Content("\n".join(f"{k}={v}" for k, v in extra.items())), classes="hint")

    def action_close(self) -> None:
        self.dismiss(None)


class LogView(Vertical):
    """The records in a table (newest at the bottom, followed unless paused), a filter line under it."""

    DEFAULT_CSS = """
    LogView { height: 1fr; }
    LogView DataTable { height: 1fr; overflow-x: hidden; padding: 0 1; }
    LogView Input { display: none; height: 1; border: none; padding: 0 1; }
    LogView.-filtering Input { display: block; }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.records: deque[LogRecord] = deque(maxlen=KEEP)
        self.filter_text = ""
        self.shown_from = "debug"
        self.follow = True
        self._by_key: dict[str, LogRecord] = {}  # row key -> its record
        self._columns: tuple = ()  # the table's now

    def compose(self) -> ComposeResult:
        yield DataTable(cursor_type="row", zebra_stripes=False, cell_padding=0)
        yield Input(placeholder="filter: words that must appear (escape clears)", compact=True)

    def on_mount(self) -> None:
        self._redraw()

    # -- records ----------------------------------------------------------------------------------
    def add_lines(self, lines: list[dict]) -> None:
        new = [log_record(line) for line in lines]
        dropped = len(self.records) + len(new) > KEEP
        self.records.extend(new)
        table = self.query_one(DataTable)
        widens = self._columns != COLUMNS and any(_of_a_request(r) for r in new if self._shown(r))
        if dropped or widens:  # the oldest fell out of the deque (their rows go too), or columns are needed
            self._redraw()
            return
        for record in new:
            if self._shown(record):
                self._add_row(table, record)
        self._follow(table)

    def replace(self, lines: list[dict]) -> None:
        """Show these lines instead (another source: the journal, or a restarted service)."""
        self.records.clear()
        self.records.extend(log_record(line) for line in lines)
        self._redraw()

    def clear(self) -> None:
        self.replace([])

    def selected(self) -> LogRecord | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return self._by_key.get(row_key.value)

    # -- filter and level -------------------------------------------------------------------------
    def open_filter(self) -> None:
        self.add_class("-filtering")
        self.query_one(Input).focus()

    def step_level(self) -> str:
        """Show from the next level up (debug → info → warning → error → debug); returns it."""
        self.shown_from = SHOWN_FROM[(SHOWN_FROM.index(self.shown_from) + 1) % len(SHOWN_FROM)]
        self._redraw()
        return self.shown_from

    def on_input_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value
        self._redraw()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.query_one(DataTable).focus()

    def on_key(self, event) -> None:
        if event.key == "escape" and self.has_class("-filtering"):
            event.stop()
            self.query_one(Input).value = ""
            self.remove_class("-filtering")
            self.query_one(DataTable).focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        record = self._by_key.get(event.row_key.value)
        if record is not None:
            self.app.push_screen(RecordScreen(record))

    @property
    def title(self) -> str:
        words = [f"{self.shown_from} and above" if self.shown_from != "debug" else "all levels"]
        if self.filter_text:
            words.append(f"filter “{self.filter_text}”")
        return " · ".join(words)

    # -- drawing ----------------------------------------------------------------------------------
    def _shown(self, record: LogRecord) -> bool:
        if LEVELS.index(record.level if record.level in LEVELS else "info") < LEVELS.index(self.shown_from):
            return False
        text = record.text.lower()
        return all(word in text for word in self.filter_text.lower().split())

    def _redraw(self) -> None:
        table = self.query_one(DataTable)
        shown = [r for r in self.records if self._shown(r)]
        columns = COLUMNS if any(_of_a_request(r) for r in shown) else tuple(
            c for c in COLUMNS if c[0] not in REQUEST_COLUMNS)
        table.clear(columns=columns != self._columns)
        if columns != self._columns:
            self._columns = columns
            for title, width in columns:
                table.add_column(title, width=width)
        self._by_key = {}
        for record in shown:
            self._add_row(table, record)
        self._follow(table)

    def _add_row(self, table: DataTable, record: LogRecord) -> None:
        style = LEVEL_STYLES.get(record.level, "")
        cells = {"Time": Text(fmt.clock(record.time), style="dim"),
                 "Level": Text(LEVEL_LABELS.get(record.level, record.level), style=style), "Event": Text(record.event),
                 "Status": Text(record.status, style="red" if record.status.startswith("error") else ""),
                 "Model": Text(record.model), "Key": Text(record.key), "Message": Text(record.message, style=style)}
        row = []
        for title, width in self._columns:
            if width is not None:
                cells[title].truncate(width - 1, overflow="ellipsis")
            row.append(cells[title])
        key = str(id(record))
        self._by_key[key] = record
        table.add_row(*row, key=key)

    def _follow(self, table: DataTable) -> None:
        if self.follow and table.row_count:
            table.move_cursor(row=table.row_count - 1, animate=False)
