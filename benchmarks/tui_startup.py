"""`appliance tui`: time to the first frame with data, idle CPU at the service's 1 Hz, and time to quit.

    python benchmarks/tui_startup.py [--socket PATH | --model PATH] [--runs 5] [--idle-s 30] [--json]

The TUI runs as its own process (`appliance tui --socket …`) in a pseudo-terminal of 80×24 (and
120×40 for idle CPU), as over SSH. "First frame with data" is the moment its output first holds the
engine panel's title, which is drawn only once a snapshot from the service has arrived. Idle CPU is
the TUI process's user+system time over `--idle-s` seconds on the dashboard, the service idle and
sending its 1 Hz snapshots, as a percentage of one core.

Without --socket it starts `appliance serve` on --model (default: the embedded default model from
the test cache) with its state in a temporary folder, and stops it at the end.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import re
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

import psutil

from appliance.control.client import ControlClient, ControlError

ESCAPES = re.compile(rb"\x1b(\[[0-9;?<>=]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])")
FIRST_DATA_MARKER = "Engine · "  # the engine panel's title: shown only with a snapshot's data
DEFAULT_MODEL = Path.home() / ".cache" / "appliance-tests" / "models" / "smollm2-135m-instruct"
APPLIANCE = Path(sys.executable).with_name("appliance")


class TuiProcess:
    """`appliance tui` in a pseudo-terminal of a given size; a thread drains its output as a terminal would."""

    def __init__(self, socket_path: Path, size: tuple[int, int]):
        self.started = time.perf_counter()
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: become the TUI
            os.environ["TERM"] = "xterm-256color"
            os.execv(str(APPLIANCE), [str(APPLIANCE), "tui", "--socket", str(socket_path)])
        columns, rows = size
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.screen_text = ""
        self.first_data_s: float | None = None
        self._seen = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        tail = b""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # the TUI exited and the pty closed
                return
            if not chunk:
                return
            if self.first_data_s is None:
                tail = (tail + chunk)[-200_000:]
                if FIRST_DATA_MARKER in ESCAPES.sub(b"", tail).decode("utf-8", "replace"):
                    self.first_data_s = time.perf_counter() - self.started
                    self._seen.set()

    def wait_first_data(self, timeout_s: float = 30.0) -> float:
        if not self._seen.wait(timeout_s):
            raise RuntimeError(f"no frame with data within {timeout_s:.0f} s")
        return self.first_data_s

    def cpu_percent(self, seconds: float) -> float:
        process = psutil.Process(self.pid)
        before, wall = process.cpu_times(), time.perf_counter()
        time.sleep(seconds)
        after, wall = process.cpu_times(), time.perf_counter() - wall
        return 100 * ((after.user - before.user) + (after.system - before.system)) / wall

    def quit(self, timeout_s: float = 10.0) -> float:
        """Press q; seconds until the process has exited."""
        pressed = time.perf_counter()
        os.write(self.fd, b"q")
        deadline = pressed + timeout_s
        while time.perf_counter() < deadline:
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return time.perf_counter() - pressed
            time.sleep(0.005)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        raise RuntimeError(f"q did not quit within {timeout_s:.0f} s")


def start_service(model: Path, state_dir: Path) -> tuple[subprocess.Popen, Path]:
    socket_path = state_dir / "control.sock"
    command = [str(APPLIANCE), "serve", "--model", str(model), "--state-dir", str(state_dir),
               "--control-socket", str(socket_path), "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"]
    service = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    with ControlClient(socket_path) as client:
        while time.monotonic() < deadline:
            if service.poll() is not None:
                raise RuntimeError(f"`appliance serve` exited with {service.returncode}: {' '.join(command)}")
            try:
                if client.status()["service"]["ready"]:
                    return service, socket_path
            except ControlError:
                pass
            time.sleep(0.2)
    service.terminate()
    raise RuntimeError("the service did not become ready within 180 s")


def import_time_s(runs: int = 5) -> float:
    """Median wall time of `python -c "import tui.app"` (a fresh interpreter, files in the page cache)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import tui.app"], check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(socket_path: Path, runs: int, idle_s: float) -> dict:
    startup, quits = [], []
    for _ in range(runs):
        tui = TuiProcess(socket_path, (80, 24))
        startup.append(tui.wait_first_data())
        time.sleep(1.0)
        quits.append(tui.quit())
    idle = {}
    for size in ((80, 24), (120, 40)):
        tui = TuiProcess(socket_path, size)
        tui.wait_first_data()
        time.sleep(3.0)  # past the first frames and the first reloads
        idle[f"{size[0]}x{size[1]}"] = tui.cpu_percent(idle_s)
        tui.quit()
    return {
        "first_frame_with_data_s": {"median": statistics.median(startup), "min": min(startup), "max": max(startup),
                                    "runs": startup},
        "import_tui_app_s": import_time_s(),
        "idle_cpu_pct_of_one_core": idle,
        "idle_window_s": idle_s,
        "quit_s": {"median": statistics.median(quits), "max": max(quits)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", type=Path, help="a running service's control socket (default: start one)")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model for the service this script starts")
    parser.add_argument("--runs", type=int, default=5, help="start-ups to time (default 5)")
    parser.add_argument("--idle-s", type=float, default=30.0, help="seconds of idle CPU measurement per size (default 30)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    service = None
    with tempfile.TemporaryDirectory(prefix="tui-bench-") as state:
        if args.socket is None:
            if not args.model.exists():
                parser.error(f"no model at {args.model}: pass --model PATH, or --socket of a running service")
            service, socket_path = start_service(args.model, Path(state))
        else:
            socket_path = args.socket
        try:
            figures = measure(socket_path, args.runs, args.idle_s)
        finally:
            if service is not None:
                service.send_signal(signal.SIGTERM)
                service.wait(60)
    figures["cpus"] = os.cpu_count()
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    first = figures["first_frame_with_data_s"]
    print(f"first frame with data (80×24): median {first['median']:.3f} s, min {first['min']:.3f}, "
          f"max {first['max']:.3f} over {len(first['runs'])} runs (target ≤ 0.8 s)")
    print(f"python -c 'import tui.app': {figures['import_tui_app_s']:.3f} s")
    for size, pct in figures["idle_cpu_pct_of_one_core"].items():
        print(f"idle CPU at {size}, 1 Hz snapshots: {pct:.2f}% of one core over {args.idle_s:.0f} s (target ≤ 3%)")
    print(f"q to exit: median {figures['quit_s']['median']:.3f} s, max {figures['quit_s']['max']:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
