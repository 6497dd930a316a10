"""journald: each log record as a journal entry with fields, so `journalctl -u appliance KEY_ID=k1a2b3c4` finds
a key's requests (also REQUEST_ID, MODEL, STATUS, TRACE_ID, EVENT, ENDPOINT; PRIORITY from the level).

Used only when the service's stderr is the journal (systemd sets JOURNAL_STREAM to its device and
inode); under a plain terminal, or a supervisor's log file, the lines stay as they are on stderr.

The bindings are cysystemd's, not systemd-python's: cysystemd ships manylinux wheels (glibc 2.34+:
Debian 12, Ubuntu 22.04 and later, all that install.sh accepts, as it needs Python 3.10), so
nothing is compiled on the box. systemd-python is source only and builds against libsystemd-dev
of exactly the running systemd's version (a plain `apt-get install libsystemd-dev` upgrades
systemd itself), which `./dev.sh`, running unprivileged, could not install at all.
"""

import logging
import os
import sys

FIELDS = "journal_fields"  # a record's extra={...} key: {"REQUEST_ID": ..., "KEY_ID": ...}
IDENTIFIER = "appliance"
# syslog priorities (sd-journal's PRIORITY): 3 err, 4 warning, 6 info, 7 debug.
PRIORITIES = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def stderr_is_the_journal() -> bool:
    """Whether systemd connected our stderr to journald (JOURNAL_STREAM is "device:inode" of that stream)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    try:
        info = os.fstat(2)
    except OSError:
        return False
    return bool(stream) and f"{info.st_dev}" == device and f"{info.st_ino}" == inode


def record_fields(**fields) -> dict:
    """extra= for a log call: its values as journal fields (upper-case names; None left out)."""
    return {FIELDS: {name.upper(): str(value) for name, value in fields.items() if value is not None}}


class JournalHandler(logging.Handler):
    """Log records to journald over its native protocol (sd_journal_send), with the record's fields."""

    def __init__(self):
        super().__init__()
        from cysystemd.journal import send  # the native journal protocol, from cysystemd's wheel

        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            fields = {"MESSAGE": message, "PRIORITY": PRIORITIES.get(record.levelno, 6),
                      "SYSLOG_IDENTIFIER": IDENTIFIER, "LOGGER": record.name, **getattr(record, FIELDS, {})}
            if self._send(**fields) < 0:  # journald not answering: the line still reaches it through stderr
                sys.stderr.write(message + "\n")
        except Exception:
            self.handleError(record)
