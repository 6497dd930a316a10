"""When the service is down: its unit's last journal lines and systemctl's state of it, read by the TUI itself.

The control socket has gone with the service, so the reason for a crash is in the journal:
cysystemd's reader (imported only when asked: the TUI's start-up stays light) over the system
journal, matched as `journalctl -u` matches a unit (its own lines and systemd's about it). Reading
another unit's journal needs root or the systemd-journal or adm group; without them the answer
says which group to join instead of showing nothing.
"""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
from dataclasses import dataclass, field

UNIT = "appliance.service"
JOURNAL_GROUPS = ("systemd-journal", "adm")
STATE_PROPERTIES = ("ActiveState", "SubState", "Result", "NRestarts", "ExecMainStatus", "StateChangeTimestamp")
# journal PRIORITY to the log levels the service's own lines carry
LEVELS = {0: "critical", 1: "critical", 2: "critical", 3: "error", 4: "warning", 5: "info", 6: "info", 7: "debug"}


@dataclass
class UnitReport:
    state: dict = field(default_factory=dict)  # systemctl show's properties; empty where systemctl is missing
    lines: list[dict] = field(default_factory=list)  # oldest first, as the service's log lines: time, level, logger, message
    problem: str | None = None  # why there are no lines, with what to do


class UnitJournal:
    """The real source: systemctl and the system journal of this machine."""

    def __init__(self, unit: str = UNIT):
        self.unit = unit

    def read(self, limit: int = 200) -> UnitReport:
        report = UnitReport(state=self.state())
        if not may_read_journal():
            report.problem = (f"the journal of {self.unit} is readable by root and the {' or '.join(JOURNAL_GROUPS)} "
                              f"groups: sudo usermod -aG systemd-journal $USER, then log in again")
            return report
        try:
            report.lines = self.last_lines(limit)
        except Exception as e:  # no journal on this machine (a container), or the reader failed
            report.problem = f"cannot read the journal: {e}"
            return report
        if not report.lines:
            report.problem = f"the journal has no lines of {self.unit} (journalctl -u {self.unit})"
        return report

    def last_lines(self, limit: int) -> list[dict]:
        from cysystemd.reader import JournalOpenMode, JournalReader, Rule

        reader = JournalReader()
        reader.open(JournalOpenMode.SYSTEM)
        reader.add_filter(Rule("_SYSTEMD_UNIT", self.unit) | Rule("UNIT", self.unit))
        reader.seek_tail()
        newest_first = []
        while len(newest_first) < limit:
            entry = reader.previous()
            if entry is None:
                break
            newest_first.append(journal_line(entry.data, entry.get_realtime_sec()))
        return newest_first[::-1]

    def state(self) -> dict:
        """systemctl show's properties of the unit; empty where there is no systemctl or it does not answer."""
        systemctl = shutil.which("systemctl")
        if systemctl is None:
            return {}
        try:
            shown = subprocess.run([systemctl, "show", self.unit, *(f"--property={p}" for p in STATE_PROPERTIES)],
                                   capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return {}
        return dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)


def may_read_journal() -> bool:
    if os.geteuid() == 0:
        return True
    mine = set(os.getgroups())
    for name in JOURNAL_GROUPS:
        try:
            if grp.getgrnam(name).gr_gid in mine:
                return True
        except KeyError:
            continue
    return False


def journal_line(data: dict, realtime_s: float) -> dict:
    """A journal entry in the shape of the service's /v1/logs lines (the log view reads both)."""
    try:
        level = LEVELS.get(int(data.get("PRIORITY", 6)), "info")
    except ValueError:
        level = "info"
    source = data.get("LOGGER") or ("systemd" if data.get("_PID") == "1" else data.get("SYSLOG_IDENTIFIER", ""))
    return {"time": realtime_s, "level": level, "logger": source, "message": data.get("MESSAGE", ""),
            "fields": {k: v for k, v in data.items() if k in ("REQUEST_ID", "KEY_ID", "MODEL", "STATUS", "TRACE_ID")}}


def state_text(state: dict) -> str:
    """systemctl's view in a line: 'failed (signal) since …; restarted 5 times; last exit status 9'."""
    if not state:
        return "systemctl is not available here"
    text = f"{state.get('ActiveState', '?')}/{state.get('SubState', '?')}"
    if state.get("Result") and state["Result"] != "success":
        text += f" (result: {state['Result']})"
    if state.get("StateChangeTimestamp"):
        text += f" since {state['StateChangeTimestamp']}"
    if state.get("NRestarts") not in (None, "", "0"):
        text += f"; restarted {state['NRestarts']} times"
    if state.get("ExecMainStatus") not in (None, "", "0"):
        text += f"; last exit status {state['ExecMainStatus']}"
    return text
