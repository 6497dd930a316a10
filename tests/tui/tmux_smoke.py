"""Smoke test in a real terminal: `appliance tui` inside tmux, keys sent, the pane read back.

As a script, against any running service (a real box included):

    python tests/tui/tmux_smoke.py --socket /run/appliance/control.sock [--size 80x24] [--show]

It exits 0 when every step showed what it should, else 1 with the last pane it saw. The pytest
test `test_tmux_smoke` runs the same steps against a test service.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

HELP_TITLE = "Keys (escape closes)"
# After the dashboard: (keys to send, text the pane must then show, text it must no longer show):
# every screen, help, quitting.
STEPS = [
    (("2",), "Architecture", "Engine ·"),
    (("3",), "Last used", "Architecture"),
    (("4",), "Service log", "Last used"),
    (("?",), HELP_TITLE, None),
    (("Escape",), "Service log", HELP_TITLE),
    (("Tab",), "Prefix hits", "Service log"),
    (("Tab",), "KV cache", "Prefix hits"),
]


class SmokeFailure(Exception):
    pass


def tmux(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["tmux", *args], capture_output=True, text=True)


def capture(session: str) -> str:
    return tmux("capture-pane", "-p", "-t", session).stdout


def wait_for_text(session: str, expected: str, gone: str | None, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    pane = ""
    while time.monotonic() < deadline:
        pane = capture(session)
        if expected in pane and (gone is None or gone not in pane):
            return pane
        time.sleep(0.1)
    wanted = repr(expected) + (f" without {gone!r}" if gone else "")
    raise SmokeFailure(f"the pane did not show {wanted} within {timeout_s:.0f} s; it showed:\n{pane}")


def run_smoke(socket_path: Path, size: tuple[int, int] = (80, 24), show: bool = False,
              timeout_s: float = 15.0, dashboard_shows: str = "Host") -> list[str]:
    """Run the steps; returns the panes seen. Raises SmokeFailure saying which step failed and what was on screen.

    The dashboard's panels draw as the first snapshot reaches each: the first step waits for
    `dashboard_shows` (the Host panel by default, on every box) before the pane counts as drawn."""
    if shutil.which("tmux") is None:
        raise SmokeFailure("tmux is not installed: sudo apt-get install tmux")
    session = f"appliance-tui-smoke-{uuid.uuid4().hex[:8]}"
    command = shlex.join([sys.executable, "-m", "tui", "--socket", str(socket_path)])
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TERM": "xterm-256color"}
    started = subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", str(size[0]), "-y", str(size[1]),
                              "-c", str(repo), command], env=env, capture_output=True, text=True)
    if started.returncode != 0:
        raise SmokeFailure(f"tmux could not start the TUI: {started.stderr.strip()}")
    panes = []
    try:
        for keys, expected, gone in [((), dashboard_shows, "waiting for the first snapshot"), *STEPS]:
            if keys:
                tmux("send-keys", "-t", session, *keys)
            panes.append(wait_for_text(session, expected, gone, timeout_s))
            if show:
                print(panes[-1])
        tmux("send-keys", "-t", session, "q")
        deadline = time.monotonic() + 5
        while tmux("has-session", "-t", session).returncode == 0:
            if time.monotonic() > deadline:
                raise SmokeFailure(f"q did not quit within 5 s; the pane showed:\n{capture(session)}")
            time.sleep(0.05)
    finally:
        tmux("kill-session", "-t", session)
    return panes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", type=Path, required=True, help="the service's control socket")
    parser.add_argument("--size", default="80x24", help="terminal size, COLUMNSxROWS (default 80x24)")
    parser.add_argument("--show", action="store_true", help="print every pane")
    args = parser.parse_args(argv)
    columns, rows = (int(n) for n in args.size.split("x"))
    try:
        run_smoke(args.socket, (columns, rows), args.show)
    except SmokeFailure as e:
        print(f"tmux smoke test failed: {e}", file=sys.stderr)
        return 1
    print(f"tmux smoke test passed at {args.size}: every screen, help and quit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
