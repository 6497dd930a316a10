"""install.sh under a real systemd (booted in namespaces by tests/system/sandbox.py).

One sandbox for the module, in order: install → service active with its STATUS → request lines are
journal entries with fields (KEY_ID, REQUEST_ID, …) → the health timer fires → kill -9 → restarted and ready → drop-in + key + config edit, and dummy NVIDIA driver
packages installed (tests/system/fake_driver.py) → re-run install.sh keeps them and holds the driver
packages → the operator upgrades the "driver" and `appliance health` reports the drift → fault
switch → the watchdog restarts it → kill -9 until StartLimitBurst keeps it down: the TUI, run by an
operator in the allowed groups, shows systemctl's state and the journal's last lines → reset-failed and
start → `systemctl stop` during a stream lets the stream finish →
without systemd as PID 1 (a Container inside the same sandbox, reusing its venv): install.sh starts
the supervisor, kill -9 → restarted, stopping the supervisor drains a stream → --uninstall removes
everything but the data, and the holds.

Speed: the venv is built for real from requirements.lock (pip's cache and the host's wheel folder
make it about a minute); the default model comes from the tests' cache through
APPLIANCE_MODEL_CACHE when present.
"""

import json
import re
import shutil
import socket
import time
from pathlib import Path

import pytest

from tests.conftest import CACHE_DIR
from tests.system import fake_driver
from tests.system.sandbox import Container, Sandbox, unavailable

CHECKOUT = Path(__file__).resolve().parents[2]
WHY_NOT = unavailable() or (None if shutil.which("dpkg-deb") and shutil.which("apt-get")
                            else "install.sh and the pinning tests need a Debian/Ubuntu host (dpkg-deb, apt-get)")
pytestmark = [pytest.mark.skipif(WHY_NOT is not None, reason=str(WHY_NOT))]

INSTALL_ENV = {"APPLIANCE_MIN_DISK_GB": "2", "APPLIANCE_READY_TIMEOUT": "240"}
if (CACHE_DIR / "models" / "smollm2-135m-instruct" / "manifest.json").exists():
    INSTALL_ENV["APPLIANCE_MODEL_CACHE"] = str(CACHE_DIR)
TIMINGS: dict[str, float] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The sandbox shares the host's network: ports of its own, so that nothing else listening on 8000
# (a developer's `appliance serve`) answers in its place. Seeded as an operator would, before install.
PORT, HTTPS_PORT, METRICS_PORT = free_port(), free_port(), free_port()
SEED_CONFIG = f"# seeded by the tests\nport = {PORT}\nhttps_port = {HTTPS_PORT}\nmetrics_port = {METRICS_PORT}\n"


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    sandbox = Sandbox(tmp_path_factory.mktemp("sandbox"), binds=[CHECKOUT])
    TIMINGS["boot"] = sandbox.start()
    sandbox.run("bash", "-c", "mkdir -p /etc/appliance && cat > /etc/appliance/config.toml", input=SEED_CONFIG)
    yield sandbox
    sandbox.stop()
    print("\nsystemd sandbox timings (s):", {k: round(v, 1) for k, v in TIMINGS.items()})


def install(box, *args, label: str = "") -> str:
    started = time.monotonic()
    result = box.run("bash", "-c", f"cd {CHECKOUT} && ./install.sh {' '.join(args)}", env=INSTALL_ENV,
                     check=False, timeout_s=900)
    name = " ".join([label + "install.sh", *args])
    runs = sum(1 for k in TIMINGS if k.startswith(name + " #"))
    TIMINGS[f"{name} #{runs + 1}"] = time.monotonic() - started
    assert result.returncode == 0, f"install.sh failed\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


def ready(box) -> bool:
    return box.run("curl", "-sf", f"http://127.0.0.1:{PORT}/ready", check=False).returncode == 0


def certificate(box) -> dict:
    return json.loads(box.run("/opt/appliance/bin/appliance", "tls", "show", "--json").stdout)


def main_pid(box) -> int:
    return int(box.show("appliance.service", "MainPID")["MainPID"])


def wait_restarted(box, old_pid: int, timeout_s: float) -> int:
    box.wait_for(lambda: main_pid(box) not in (0, old_pid), timeout_s, "a new main process")
    box.wait_for(lambda: ready(box), 120, "/ready after the restart")
    return main_pid(box)


def test_install_starts_the_service_with_status(box):
    out = install(box)
    assert "ready after" in out and "appliance keys create" in out and "appliance tui" in out
    assert "TLS: generating a self-signed certificate" in out
    assert f"certificate SHA-256 {certificate(box)['fingerprint_sha256']}" in out  # printed for the operator
    assert "Endpoint:   https://" in out and f":{HTTPS_PORT}/v1" in out
    props = box.show("appliance.service", "ActiveState", "StatusText", "User", "NRestarts")
    assert props["ActiveState"] == "active" and props["User"] == "appliance"
    assert props["StatusText"].startswith("serving smollm2-135m-instruct"), props
    assert box.run("systemctl", "is-enabled", "appliance.service", "appliance-health.timer").returncode == 0
    assert "appliance" in box.run("id", "-nG", "appliance").stdout
    assert box.run("stat", "-c", "%U:%G %a", "/var/lib/appliance/health.key").stdout.strip() == "appliance:appliance 640"
    # The control socket: only root and the appliance group may reach it; the CLI talks through it.
    assert box.run("stat", "-c", "%U:%G %a", "/run/appliance/control.sock").stdout.strip() == "appliance:appliance 660"
    status = json.loads(box.run("/opt/appliance/bin/appliance", "status", "--json").stdout)
    assert status["service"]["ready"] and status["engine"]["model"] == "smollm2-135m-instruct"


def test_install_serves_https_with_a_generated_certificate_and_the_unit_stays_hardened(box):
    cert = certificate(box)
    assert cert["self_signed"] and "appliance-test" in cert["names"] and "127.0.0.1" in cert["names"]
    assert box.run("stat", "-c", "%U:%G %a", "/etc/appliance/tls/key.pem").stdout.strip() == "appliance:appliance 600"
    status = json.loads(box.run("/opt/appliance/bin/appliance", "status", "--json").stdout)
    assert status["listeners"]["tls"]["fingerprint_sha256"] == cert["fingerprint_sha256"]
    key = box.run("cat", "/var/lib/appliance/health.key").stdout.strip()
    answer = box.run("curl", "-s", "--cacert", "/etc/appliance/tls/cert.pem", "-o", "/dev/null", "-w", "%{http_code}",
                     f"https://appliance-test:{HTTPS_PORT}/v1/models", "--resolve",
                     f"appliance-test:{HTTPS_PORT}:127.0.0.1", "-H", f"Authorization: Bearer {key}")
    assert answer.stdout == "200", answer
    plain = box.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{HTTPS_PORT}/health",
                    check=False)
    assert plain.stdout in ("000", ""), plain  # plain HTTP to the TLS port: no HTTP answer
    security = box.run("systemd-analyze", "security", "--no-pager", "appliance.service", check=False).stdout
    exposure = float(re.search(r"Overall exposure level for appliance.service: (\d+(?:\.\d+)?)", security).group(1))
    assert exposure <= 2.0, security[-3000:]
    # `systemctl reload` re-reads the certificate in place: same process, nothing restarted.
    pid = main_pid(box)
    box.run("systemctl", "reload", "appliance.service")
    box.wait_for(lambda: "TLS certificate re-read" in box.run("journalctl", "-u", "appliance.service", "--no-pager",
                                                              "-n", "50").stdout, 20, "the reload in the journal")
    assert main_pid(box) == pid and box.show("appliance.service", "ActiveState")["ActiveState"] == "active"


def test_request_lines_are_journal_entries_with_fields(box):
    key = box.run("cat", "/var/lib/appliance/health.key").stdout.strip()
    _, _, key_id, secret = key.split("-", 3)  # sk-app-<id>-<secret> (a secret may hold "-" too)
    answer = json.loads(box.run("curl", "-sf", f"http://127.0.0.1:{PORT}/v1/completions", "-H", f"Authorization: Bearer {key}",
                                "-H", "content-type: application/json", "-d",
                                '{"model": "smollm2-135m-instruct", "prompt": "Hi", "max_tokens": 2}').stdout)

    def entries() -> list[dict]:
        out = box.run("journalctl", "-u", "appliance.service", f"KEY_ID={key_id}", "REQUEST_ID=" + answer["id"],
                      "-o", "json", "--no-pager").stdout
        return [json.loads(line) for line in out.splitlines()]

    [entry] = box.wait_for(entries, 10, "the request's journal entry")
    assert (entry["MODEL"], entry["STATUS"], entry["EVENT"], entry["PRIORITY"]) == ("smollm2-135m-instruct", "ok", "request", "6")
    assert entry["SYSLOG_IDENTIFIER"] == "appliance" and entry["LOGGER"] == "appliance.request"
    assert json.loads(entry["MESSAGE"])["request_id"] == answer["id"]  # the line reads as before: JSON
    assert secret not in json.dumps(entry)  # the key's id, never its secret
    refused = box.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{PORT}/v1/models",
                      "-H", "Authorization: Bearer sk-app-nope").stdout
    assert refused == "401"
    box.wait_for(lambda: "error 401" in box.run("journalctl", "-u", "appliance.service", "EVENT=refused",
                                                "-o", "cat", "--no-pager").stdout, 10, "the refusal's entry")


def test_health_timer_fires(box):
    # The timer's first run is 2 min after boot; make it fire now through a drop-in (like an operator).
    box.sh("mkdir -p /etc/systemd/system/appliance-health.timer.d && "
           "printf '[Timer]\\nOnActiveSec=1s\\n' > /etc/systemd/system/appliance-health.timer.d/test.conf && "
           "systemctl daemon-reload && systemctl restart appliance-health.timer")
    box.wait_for(lambda: box.show("appliance-health.service", "ExecMainExitTimestampMonotonic")
                 ["ExecMainExitTimestampMonotonic"] not in ("0", ""), 60, "appliance-health.service to run")
    props = box.show("appliance-health.service", "Result", "ExecMainStatus")
    report = json.loads(box.run("cat", "/var/lib/appliance/health.json").stdout)
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert statuses["ready"] == "ok" and statuses["canary"] == "ok", report
    assert statuses["driver"] == "n/a"  # no GPU in CI
    assert props["Result"] == "success" and report["ok"] is True, (props, report)


def test_kill_9_restarts_and_becomes_ready(box):
    old = main_pid(box)
    assert old > 0, "appliance.service has no main process"  # `kill -9 0` would hit pytest's own group
    box.run("kill", "-9", str(old))
    new = wait_restarted(box, old, 30)
    assert new != old
    assert int(box.show("appliance.service", "NRestarts")["NRestarts"]) >= 1


def test_rerun_is_an_upgrade_that_keeps_config_keys_and_dropins(box):
    # Also a driver installed since (the dummy packages; no kernel module is loaded): this re-run pins it.
    debs = fake_driver.build(box, fake_driver.PINNED)
    box.sh(f"dpkg -i {debs}/*.deb")
    key = json.loads(box.run("appliance", "keys", "create", "my-app", "--json", "--state-dir", "/var/lib/appliance").stdout)
    box.sh("chown appliance:appliance /var/lib/appliance/keys.db*")
    box.sh("echo '# edited by the operator' >> /etc/appliance/config.toml")
    box.sh("mkdir -p /etc/systemd/system/appliance.service.d && "
           "printf '[Service]\\nWatchdogSec=6\\n' > /etc/systemd/system/appliance.service.d/watchdog.conf")
    old = main_pid(box)
    fingerprint = certificate(box)["fingerprint_sha256"]
    out = install(box)
    assert "keeping the existing /etc/appliance/config.toml" in out
    assert "TLS: keeping the certificate in /etc/appliance/tls" in out and f"SHA-256 {fingerprint}" in out
    assert certificate(box)["fingerprint_sha256"] == fingerprint  # clients that trust it go on trusting it
    assert "# edited by the operator" in box.run("cat", "/etc/appliance/config.toml").stdout
    assert box.run("cat", "/etc/systemd/system/appliance.service.d/watchdog.conf").stdout == "[Service]\nWatchdogSec=6\n"
    assert main_pid(box) != old  # restarted once, with the new code
    assert box.show("appliance.service", "WatchdogUSec")["WatchdogUSec"] == "6s"
    status = box.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{PORT}/v1/models",
                     "-H", f"Authorization: Bearer {key['api_key']}").stdout
    assert status == "200"
    assert f"pinned driver {fake_driver.PINNED}" in out


def test_rerun_held_the_driver_packages_and_recorded_the_version(box):
    held = box.run("apt-mark", "showhold").stdout.split()
    assert sorted(held) == sorted(fake_driver.PACKAGES), held
    record = box.run("cat", "/etc/appliance/driver.env").stdout
    assert f"DRIVER_VERSION={fake_driver.PINNED}\n" in record, record
    assert f"PACKAGES='{' '.join(sorted(fake_driver.PACKAGES))}'" in record, record
    assert '"nvidia-";' in box.run("cat", "/etc/apt/apt.conf.d/51appliance-hold-nvidia").stdout
    # The hold bites: apt refuses to upgrade them.
    newer = fake_driver.build(box, fake_driver.NEWER)
    refused = box.sh(f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q {newer}/*.deb", check=False, timeout_s=120)
    assert refused.returncode != 0 and "Held packages were changed" in refused.stderr, refused


def health_driver(box) -> tuple[int, dict]:
    """`appliance health --no-service --json`: the exit code and the driver check."""
    report = box.run("appliance", "health", "--no-service", "--no-save", "--json", check=False)
    return report.returncode, next(c for c in json.loads(report.stdout)["checks"] if c["name"] == "driver")


def test_health_reports_a_changed_driver(box):
    _, before = health_driver(box)
    assert before["details"]["pinned"] == fake_driver.PINNED and "changed" not in before["message"], before
    # The operator upgrades the driver past the hold.
    newer = f"/var/tmp/fake-nvidia-{fake_driver.NEWER}"
    box.sh(f"apt-mark unhold {' '.join(fake_driver.PACKAGES)} && "
           f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q {newer}/*.deb", timeout_s=120)
    code, driver = health_driver(box)
    drift = f"the driver packages changed: pinned {fake_driver.PINNED}, installed now {fake_driver.NEWER}"
    assert code == 1 and driver["status"] == "fail" and drift in driver["message"], driver
    text = box.run("appliance", "health", "--no-service", "--no-save", check=False)
    assert text.returncode == 1 and drift in text.stdout, text.stdout


def test_watchdog_restarts_a_stalled_engine(box):
    old = main_pid(box)
    restarts = int(box.show("appliance.service", "NRestarts")["NRestarts"])
    box.run("install", "-o", "appliance", "-g", "appliance", "/dev/null", "/var/lib/appliance/fault-stall-engine")
    try:
        box.wait_for(lambda: int(box.show("appliance.service", "NRestarts")["NRestarts"]) > restarts, 60,
                     "the watchdog to restart the service")
    finally:
        box.run("rm", "-f", "/var/lib/appliance/fault-stall-engine")
    journal = box.run("journalctl", "-u", "appliance.service", "--no-pager", "-n", "200").stdout
    assert "Watchdog timeout" in journal, journal[-3000:]
    wait_restarted(box, old, 60)


def test_killed_and_kept_down_the_tui_shows_why_from_the_journal(box):
    """kill -9 until StartLimitBurst stops the restarts: an operator in the appliance and systemd-journal
    groups opens the TUI, whose Health & Logs screen shows systemctl's state and the journal's last lines."""
    metrics = box.run("curl", "-sf", f"http://127.0.0.1:{METRICS_PORT}/metrics").stdout
    unclean = next(line for line in metrics.splitlines() if line.startswith("appliance_unclean_restarts_total"))
    assert float(unclean.split()[1]) >= 2, unclean  # the kill -9 and the watchdog's abort above
    box.sh("id ops >/dev/null 2>&1 || useradd --create-home --groups appliance,systemd-journal ops")
    deadline = time.monotonic() + 180
    while box.show("appliance.service", "ActiveState")["ActiveState"] != "failed":  # Restart= gave up
        assert time.monotonic() < deadline, box.show("appliance.service", "ActiveState", "Result", "NRestarts")
        pid = main_pid(box)
        if pid:
            box.run("kill", "-9", str(pid), check=False)
        time.sleep(0.3)
    journal = box.run("journalctl", "-u", "appliance.service", "--no-pager", "-n", "30").stdout
    assert "Start request repeated too quickly" in journal, journal  # StartLimitBurst, not a restart in flight
    probe = box.run("runuser", "-u", "ops", "--", "/opt/appliance/bin/python", f"{CHECKOUT}/tests/system/tui_probe.py",
                    "--wait-for", "Start request repeated too quickly", timeout_s=90)
    shown = json.loads(probe.stdout)
    assert shown["connection"] == "disconnected", shown
    assert "appliance.service failed/failed (result: signal)" in shown["readiness"], shown
    assert shown["log-title"].startswith("Journal of appliance.service"), shown
    rows = "\n".join(shown["rows"])
    assert "Main process exited, code=killed, status=9/KILL" in rows and "Start request repeated too quickly" in rows, rows
    # The operator brings it back.
    box.run("systemctl", "reset-failed", "appliance.service")
    box.run("systemctl", "start", "appliance.service", timeout_s=300)
    box.wait_for(lambda: ready(box), 120, "/ready after the restart")


def test_stop_during_a_stream_lets_it_finish(box):
    key = box.run("cat", "/var/lib/appliance/health.key").stdout.strip()
    box.sh(f"""curl -sN http://127.0.0.1:{PORT}/v1/completions -H 'Authorization: Bearer {key}' \
        -H 'content-type: application/json' \
        -d '{{"model": "smollm2-135m-instruct", "prompt": "Count: 1 2 3", "max_tokens": 40, "stream": true,
             "temperature": 0, "ignore_eos": true}}' > /tmp/stream.out 2>&1 &
        sleep 2; systemctl stop appliance.service""", timeout_s=120)
    out = box.run("cat", "/tmp/stream.out").stdout
    assert out.rstrip().endswith("data: [DONE]"), out[-2000:]
    assert '"finish_reason":"length"' in out.replace(" ", ""), out[-2000:]
    assert box.show("appliance.service", "Result")["Result"] == "success"


def test_without_systemd_the_supervisor_restarts_and_drains(box):
    """A container (systemd not PID 1) in the same sandbox: the venv built above is reused."""
    container = Container(box)
    container.start()
    try:
        out = install(container, label="[container] ")
        assert "warning: systemd is not PID 1 here" in out and "ready after" in out, out
        assert "under /opt/appliance/bin/appliance-supervise (no systemd here)" in out, out
        assert f"pinned driver {fake_driver.NEWER}" in out  # the re-run pins the driver found now
        assert container.run("systemctl", "is-active", "appliance.service", check=False).stdout.strip() != "active"

        def serve_pid() -> int:
            found = container.run("pgrep", "-f", "-u", "appliance", "appliance serve", check=False).stdout.split()
            return int(found[0]) if len(found) == 1 else 0

        supervisor = int(container.run("cat", "/run/appliance/supervisor.pid").stdout)
        old = container.wait_for(serve_pid, 10, "the service process")
        started = time.monotonic()
        container.run("kill", "-9", str(old))
        container.wait_for(lambda: serve_pid() not in (0, old), 30, "the supervisor to restart the service")
        container.wait_for(lambda: ready(container), 120, "/ready after the restart")
        TIMINGS["container: kill -9 to ready"] = time.monotonic() - started
        assert "restarting in 5 s" in container.run("cat", "/var/log/appliance/supervisor.log").stdout

        # Stopping the supervisor passes SIGTERM on: a stream in flight completes, then all exit.
        key = container.run("cat", "/var/lib/appliance/health.key").stdout.strip()
        container.sh(f"""curl -sN http://127.0.0.1:{PORT}/v1/completions -H 'Authorization: Bearer {key}' \
            -H 'content-type: application/json' \
            -d '{{"model": "smollm2-135m-instruct", "prompt": "Count: 1 2 3", "max_tokens": 40, "stream": true,
                 "temperature": 0, "ignore_eos": true}}' > /tmp/container-stream.out 2>&1 &
            sleep 2; kill -TERM {supervisor}
            while kill -0 {supervisor} 2>/dev/null; do sleep 0.2; done; wait""", timeout_s=120)
        out = container.run("cat", "/tmp/container-stream.out").stdout
        assert out.rstrip().endswith("data: [DONE]"), out[-2000:]
        assert serve_pid() == 0
        log = container.run("cat", "/var/log/appliance/serve.log").stdout
        assert "draining" in log, log[-2000:]
    finally:
        container.stop()


def test_uninstall_removes_all_but_the_data(box):
    install(box, "--uninstall")
    assert box.run("apt-mark", "showhold").stdout.strip() == ""
    for path in ("/opt/appliance", "/etc/appliance/driver.env", "/etc/apt/apt.conf.d/51appliance-hold-nvidia", "/etc/systemd/system/appliance.service", "/etc/systemd/system/appliance-health.timer",
                 "/usr/local/bin/appliance"):
        assert box.run("test", "-e", path, check=False).returncode != 0, f"{path} is still there"
    assert box.run("systemctl", "is-active", "appliance.service", check=False).stdout.strip() != "active"
    for path in ("/var/lib/appliance/keys.db", "/var/lib/appliance/models/smollm2-135m-instruct/manifest.json",
                 "/etc/appliance/config.toml"):
        assert box.run("test", "-e", path, check=False).returncode == 0, f"{path} was removed"
    install(box, "--uninstall", "--purge")
    assert box.run("test", "-e", "/var/lib/appliance", check=False).returncode != 0
    assert box.run("getent", "passwd", "appliance", check=False).returncode != 0
