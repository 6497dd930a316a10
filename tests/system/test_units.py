"""The unit files parse cleanly and are hardened: `systemd-analyze verify` and `security --offline`."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD_DIR = Path(__file__).resolve().parents[2] / "systemd"
UNITS = ["appliance.service", "appliance-health.service", "appliance-health.timer"]
SERVICES = ["appliance.service", "appliance-health.service"]
MAX_EXPOSURE = 2.0

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze is not installed (apt-get install systemd)")


@pytest.fixture
def unit_dir(tmp_path) -> Path:
    """The units with ExecStart pointing at a stub, since /opt/appliance may not exist here."""
    stub = tmp_path / "bin" / "appliance"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    for name in UNITS:
        text = (SYSTEMD_DIR / name).read_text()
        (units / name).write_text(text.replace("/opt/appliance/bin/appliance", str(stub)))
    return units


def test_units_exist_and_point_at_the_installed_venv():
    for name in UNITS:
        assert (SYSTEMD_DIR / name).is_file(), name
    for name in SERVICES:
        assert "ExecStart=/opt/appliance/bin/appliance " in (SYSTEMD_DIR / name).read_text()


@pytest.mark.parametrize("name", UNITS)
def test_verify_prints_nothing(unit_dir, name):
    # verify exits 0 on "Unknown key ... ignoring", so any output at all is a failure.
    result = subprocess.run(["systemd-analyze", "verify", str(unit_dir / name)],
                            capture_output=True, text=True, cwd=unit_dir, timeout=60)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


@pytest.mark.parametrize("name", SERVICES)
def test_security_exposure_at_most_2(unit_dir, name):
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit_dir / name)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout[-3000:]


def test_service_contract():
    """What the rest of the appliance relies on: notify + watchdog, restarts, drain time, GPU access."""
    text = (SYSTEMD_DIR / "appliance.service").read_text()
    settings = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    one = {k: v[-1] for k, v in settings.items()}
    assert one["Type"] == "notify"
    assert one["Restart"] == "on-failure" and one["RestartSec"] == "5"
    assert one["StartLimitBurst"] == "5" and "StartLimitIntervalSec" in one
    assert one["KillMode"] == "mixed" and one["LimitCORE"] == "0"
    assert one["User"] == one["Group"] == "appliance"
    assert set(one["SupplementaryGroups"].split()) >= {"video", "render"}
    assert int(one["WatchdogSec"]) > 0
    from appliance.config import Config

    assert int(one["TimeoutStopSec"]) >= Config().drain_timeout_s + 10
    from appliance.api.connections import FD_RESERVE

    assert int(one["LimitNOFILE"]) >= Config().max_connections + FD_RESERVE  # the connection limit, not EMFILE, bites
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"  # SIGHUP re-reads the certificate
    allowed = " ".join(settings["DeviceAllow"])
    assert "/dev/nvidiactl" in allowed and "/dev/nvidia0" in allowed and "/dev/nvidia-uvm" in allowed
    for key in ("StateDirectory", "RuntimeDirectory", "LogsDirectory"):
        assert one[key] == "appliance"
    timer = (SYSTEMD_DIR / "appliance-health.timer").read_text()
    assert "OnUnitActiveSec=1min" in timer
