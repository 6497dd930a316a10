"""Run the TUI headless (Textual's run_test) against a box's service, open Health & Logs, print what it shows.

Run inside the systemd sandbox as an operator, with the installed venv's Python:

    runuser -u ops -- /opt/appliance/bin/python tests/system/tui_probe.py [--wait-for TEXT]

Prints one JSON object: the connection state, the readiness and log-title texts, and the log rows
(cells joined by spaces), once a row contains TEXT or after --timeout seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from textual.widgets import DataTable

from appliance.control.client import ControlClient, resolve_socket
from tui.app import ApplianceTUI


async def probe(wait_for: str, timeout_s: float) -> dict:
    app = ApplianceTUI(ControlClient(resolve_socket()))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("4")
        deadline = time.monotonic() + timeout_s
        while True:
            await pilot.pause(0.2)
            screen = app.screen
            if type(screen).__name__ != "HealthLogsScreen":
                continue
            table = screen.query_one("#log").query_one(DataTable)
            rows = [" ".join(str(cell) for cell in table.get_row_at(i)) for i in range(table.row_count)]
            if any(wait_for in row for row in rows) or time.monotonic() > deadline:
                shown = {name: screen.query_one(f"#{name}").render() for name in ("readiness", "checks", "log-title")}
                return {"connection": app.state.connection.state, "rows": rows,
                        **{name: getattr(r, "plain", str(r)) for name, r in shown.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--wait-for", default="", help="return once a log row contains this")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(probe(args.wait_for, args.timeout))))


if __name__ == "__main__":
    main()
