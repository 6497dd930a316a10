"""When log records become journal entries: only when stderr is the journal (the entries themselves, and
journalctl matching their fields, are checked under a real systemd in tests/system/test_install_systemd.py)."""

import logging
import os

from appliance.ops.journal import JournalHandler, record_fields, stderr_is_the_journal
from appliance.ops.requestlog import setup_logging


def test_stderr_is_the_journal_only_when_journal_stream_names_it(monkeypatch):
    info = os.fstat(2)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert not stderr_is_the_journal()  # a plain terminal
    monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino + 1}")
    assert not stderr_is_the_journal()  # inherited from a unit, but stderr now goes elsewhere (a supervisor's file)
    monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
    assert stderr_is_the_journal()


def test_under_a_plain_terminal_the_lines_stay_as_they_are(monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging("info")
        [handler] = root.handlers
        assert type(handler) is logging.StreamHandler and not isinstance(handler, JournalHandler)
        assert handler.formatter._fmt == "%(asctime)s %(name)s %(levelname)s %(message)s"
    finally:
        root.handlers[:], root.level = handlers, level


def test_fields_are_upper_case_and_none_is_left_out():
    assert record_fields(key_id="k1", request_id="r1", trace_id=None) == {
        "journal_fields": {"KEY_ID": "k1", "REQUEST_ID": "r1"}}
