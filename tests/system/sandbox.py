"""Boot a real systemd as PID 1 in Linux namespaces, on a host whose PID 1 is not systemd.

The root is an overlay: the host's / below, a throwaway tmpfs above. The checkout and its venv are
visible inside at the same paths; whatever an install writes (/etc, /opt, users, apt-mark holds)
vanishes at stop(). Never boot systemd on the host root itself: systemd-tmpfiles would wipe /tmp.

    with Sandbox(tmp_path) as box:
        box.run("systemctl", "is-system-running")

Needs root, unshare/nsenter (util-linux), overlayfs and a cgroup2 hierarchy; `unavailable()`
says why not when one is missing, so tests can skip.

`Sandbox(dir, root=DIR, overlay=False)` boots another root filesystem instead (a debootstrapped
Debian, with its own systemd), written in place. `Container(box)` is a namespace inside a running
sandbox whose PID 1 is a plain reaper and whose /run is empty: systemd is not PID 1 there, as in a
docker container, while the filesystem (and whatever is installed in it) is the sandbox's.

As a command, it boots, runs one command inside (output streamed), and halts:

    python3 tests/system/sandbox.py [--root DIR [--no-overlay]] [--dir WORKDIR] -- CMD...
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

SYSTEMD = "/lib/systemd/systemd"
MASK = ["postgresql.service", "console-getty.service", "getty@tty1.service", "systemd-timesyncd.service",
        "systemd-pstore.service", "e2scrub_reap.service", "apt-daily.timer", "apt-daily-upgrade.timer",
        "dpkg-db-backup.timer", "e2scrub_all.timer", "fstrim.timer", "man-db.timer"]
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Runs as PID 1 of the new pid namespace, inside new mount/cgroup/uts/ipc namespaces.
INNER = r"""
set -e
D=$1; TMPFS_SIZE=$2; MASK=$3; LOWER=$4; OVERLAY=$5; BINDS=$6
R=$D/root
if [ "$OVERLAY" = 1 ]; then
    mount -t tmpfs -o size=$TMPFS_SIZE,mode=755 sbtmp "$D/ovl"
    mkdir -p "$D/ovl/upper" "$D/ovl/work"
    mount -t overlay overlay -o "lowerdir=$LOWER,upperdir=$D/ovl/upper,workdir=$D/ovl/work" "$R"
else
    mount --bind "$LOWER" "$R"
fi
mkdir -p "$R/oldroot"
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
mount -t cgroup2 -o nsdelegate,nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$R/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/tmp"
# Host folders that must stay visible at their own path (a checkout under /tmp, say).
for b in $BINDS; do mkdir -p "$R$b"; mount --bind "$b" "$R$b"; done
mount -t tmpfs -o mode=755,nosuid tmpfs "$R/dev"
for n in null zero full random urandom tty; do touch "$R/dev/$n"; mount --bind "/dev/$n" "$R/dev/$n"; done
mkdir -p "$R/dev/pts" "$R/dev/shm" "$R/dev/mqueue"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
mount -t mqueue mqueue "$R/dev/mqueue" 2>/dev/null || true
ln -s /proc/self/fd "$R/dev/fd"; ln -s /proc/self/fd/0 "$R/dev/stdin"
ln -s /proc/self/fd/1 "$R/dev/stdout"; ln -s /proc/self/fd/2 "$R/dev/stderr"
: > "$D/console.log"; touch "$R/dev/console"; mount --bind "$D/console.log" "$R/dev/console"
for u in $MASK; do ln -sf /dev/null "$R/etc/systemd/system/$u"; done
rm -f "$R/etc/systemd/system/multi-user.target.wants/postgresql.service"
echo appliance-test > "$R/etc/hostname"; hostname appliance-test
cd "$R"; pivot_root . oldroot; umount -l /oldroot; rmdir /oldroot 2>/dev/null || true
exec env -i container=appliance-test TERM=dumb SYSTEMD_LOG_LEVEL=notice \
     /lib/systemd/systemd --system --unit=multi-user.target --show-status=false </dev/null >/dev/console 2>&1
"""


def unavailable() -> str | None:
    """Why a sandbox cannot boot here, or None."""
    if os.geteuid() != 0:
        return "booting systemd in namespaces needs root"
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install util-linux)"
    if not Path(SYSTEMD).exists():
        return f"{SYSTEMD} is missing (apt-get install systemd)"
    if not Path("/sys/fs/cgroup/cgroup.controllers").exists() and not Path("/sys/fs/cgroup/unified").is_dir():
        return "no cgroup2 hierarchy on this host"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlayfs"
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount", "--cgroup", "true"], capture_output=True)
    if probe.returncode != 0:
        return f"unshare is not permitted here: {probe.stderr.decode().strip()}"
    return None


class Sandbox:
    def __init__(self, workdir: Path, tmpfs_size: str = "6g", mask: list[str] | None = None, root: str = "/",
                 overlay: bool = True, binds: list[Path] = ()):
        """root: the filesystem to boot (default the host's); overlay: keep it pristine under a
        throwaway tmpfs (else it is written in place, e.g. a fresh root too big for a tmpfs);
        binds: host folders mounted at the same path inside (the sandbox has its own /tmp and /run)."""
        self.dir = Path(workdir)
        self.tmpfs_size = tmpfs_size
        self.root = str(Path(root).resolve())
        self.overlay = overlay
        self.binds = [str(Path(b).resolve()) for b in binds]
        self.mask = MASK + (mask or [])
        base = Path("/sys/fs/cgroup/unified") if Path("/sys/fs/cgroup/unified").is_dir() else Path("/sys/fs/cgroup")
        self.cgroup = base / f"appliance-test-{os.getpid()}-{self.dir.name}"
        self.pid1: int | None = None
        self._outer: subprocess.Popen | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, timeout_s: float = 60.0) -> float:
        """Boot; returns the seconds until `systemctl is-system-running` said running/degraded."""
        started = time.monotonic()
        (self.dir / "ovl").mkdir(parents=True, exist_ok=True)
        (self.dir / "root").mkdir(parents=True, exist_ok=True)
        self.cgroup.mkdir(exist_ok=True)
        # Move into a dedicated cgroup first, so that the new cgroup namespace is rooted there.
        script = ('echo $$ > "$1/cgroup.procs"; exec unshare --pid --fork --mount --cgroup --uts --ipc '
                  '--propagation private --kill-child -- bash -c "$2" inner "$3" "$4" "$5" "$6" "$7" "$8"')
        self._outer = subprocess.Popen(
            ["setsid", "bash", "-c", script, "_", str(self.cgroup), INNER, str(self.dir), self.tmpfs_size,
             " ".join(self.mask), self.root, "1" if self.overlay else "0", " ".join(self.binds)],
            stdin=subprocess.DEVNULL, stdout=open(self.dir / "outer.log", "wb"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while self.pid1 is None:
            self.pid1 = self._find_pid1()
            if self.pid1 is None:
                if self._outer.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("systemd did not start: " + (self.dir / "outer.log").read_text()[-2000:])
                time.sleep(0.05)
        state = ""
        while time.monotonic() < deadline:
            state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return time.monotonic() - started
            time.sleep(0.1)
        raise RuntimeError(f"systemd did not finish booting (state {state!r}); console: {self.console()[-2000:]}")

    def _find_pid1(self) -> int | None:
        """The namespaced PID 1: the child of unshare whose executable is systemd."""
        for pid in _descendants(self._outer.pid):
            try:
                if os.readlink(f"/proc/{pid}/exe").endswith("/systemd"):
                    return pid
            except OSError:
                continue
        return None

    def stop(self) -> None:
        if self.pid1 is not None:
            try:
                os.kill(self.pid1, signal.SIGRTMIN + 3)  # the container convention for "halt"
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 30
            while _alive(self.pid1) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(self.pid1):
                os.kill(self.pid1, signal.SIGKILL)
            self.pid1 = None
        self._reap_outer()
        deadline = time.monotonic() + 5
        while self.cgroup.exists() and time.monotonic() < deadline:  # leftover (empty) cgroups, bottom-up
            subprocess.run(["find", str(self.cgroup), "-depth", "-type", "d", "-exec", "rmdir", "{}", ";"],
                           capture_output=True)
            time.sleep(0.2)

    def _reap_outer(self) -> None:
        if self._outer is not None:
            try:
                self._outer.wait(10)
            except subprocess.TimeoutExpired:
                self._outer.kill()

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- inside ---------------------------------------------------------------------------------
    def command(self, *argv: str, env: dict | None = None) -> list[str]:
        """The host command line that runs argv inside every namespace, with a clean environment."""
        variables = {"PATH": PATH, "TERM": "dumb", "LANG": "C.UTF-8", "HOME": "/root"}
        variables.update(env or {})
        return ["nsenter", "-t", str(self.pid1), "-m", "-u", "-i", "-p", "-C", "-r", "-w", "--",
                "env", "-i", *(f"{k}={v}" for k, v in variables.items()), *argv]

    def run(self, *argv: str, check: bool = True, timeout_s: float = 120.0, env: dict | None = None,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run a command inside every namespace of the sandbox, with a clean environment."""
        cmd = self.command(*argv, env=env)
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {result.returncode}\n"
                                 f"stdout: {result.stdout[-4000:]}\nstderr: {result.stderr[-4000:]}")
        return result

    def sh(self, script: str, **kwargs) -> subprocess.CompletedProcess:
        return self.run("bash", "-c", script, **kwargs)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def console(self) -> str:
        try:
            return (self.dir / "console.log").read_text(errors="replace")
        except OSError:
            return ""

    def wait_for(self, predicate, timeout_s: float, what: str, interval_s: float = 0.5):
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
            time.sleep(interval_s)


# PID 1 of a Container: reaps whatever is orphaned to it (as tini or docker --init do), exits on SIGTERM.
REAPER = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.2)
"""


class Container(Sandbox):
    """A container-like namespace inside a running Sandbox: a new pid namespace whose PID 1 is a
    plain reaper (not systemd), a new mount namespace with its own /proc and an empty /run (so no
    /run/systemd/system); the filesystem is the sandbox's, so what was installed there is reused."""

    MARK = "appliance-container-init"

    def __init__(self, box: Sandbox):
        self.box = box
        self.dir = box.dir
        self.pid1 = None
        self._outer = None

    def start(self, timeout_s: float = 30.0) -> float:
        started = time.monotonic()
        inner = f'mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run && exec /usr/bin/python3 -c "$1" {self.MARK}'
        cmd = self.box.command("unshare", "--pid", "--fork", "--mount-proc", "--propagation", "private",
                               "--kill-child", "--", "bash", "-c", inner, "_", REAPER)
        self._outer = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=open(self.dir / "container.log", "wb"),
                                       stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while self.pid1 is None:
            for pid in _descendants(self._outer.pid):
                try:
                    if "python" in os.readlink(f"/proc/{pid}/exe") and \
                            self.MARK in Path(f"/proc/{pid}/cmdline").read_text():
                        self.pid1 = pid
                except OSError:
                    continue
            if self.pid1 is None:
                if self._outer.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the container did not start: " + (self.dir / "container.log").read_text()[-2000:])
                time.sleep(0.05)
        return time.monotonic() - started

    def stop(self) -> None:
        if self.pid1 is not None:
            try:
                os.kill(self.pid1, signal.SIGKILL)  # PID 1 gone: the kernel kills the whole pid namespace
            except ProcessLookupError:
                pass
            self.pid1 = None
        self._reap_outer()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _descendants(pid: int, depth: int = 4) -> list[int]:
    found, frontier = [], [pid]
    for _ in range(depth):
        frontier = [c for p in frontier for c in _children(p)]
        found.extend(frontier)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Boot a sandbox, run one command inside with its output streamed, halt; exit with its status."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--root", default="/", help="the root filesystem to boot (default: the host's, under an overlay)")
    parser.add_argument("--no-overlay", action="store_true", help="write into --root in place (no tmpfs layer)")
    parser.add_argument("--dir", help="working folder (default: a new one under /tmp)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="for the command")
    parser.add_argument("cmd", nargs="+", help="the command to run inside (after --)")
    args = parser.parse_args(argv)
    why = unavailable()
    if why:
        print(f"sandbox: cannot boot here: {why}", flush=True)
        return 2
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="appliance-sandbox-"))
    box = Sandbox(workdir, root=args.root, overlay=not args.no_overlay)
    try:
        print(f"sandbox: booted systemd in {box.start(timeout_s=120):.1f} s", flush=True)
        env = dict(item.split("=", 1) for item in args.env)
        return subprocess.run(box.command(*args.cmd, env=env)).returncode
    finally:
        box.stop()


if __name__ == "__main__":
    raise SystemExit(main())
