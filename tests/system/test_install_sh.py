"""install.sh as a script: shellcheck-clean, structured as the style asks, --help and --dry-run."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

INSTALL_SH = Path(__file__).resolve().parents[2] / "install.sh"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt-get install shellcheck)")
def test_shellcheck_clean():
    result = subprocess.run(["shellcheck", "--severity=style", str(INSTALL_SH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_body_runs_from_main_on_the_last_line():
    text = INSTALL_SH.read_text()
    assert "set -euo pipefail" in text
    assert text.rstrip().splitlines()[-1] == 'main "$@"'


def test_help_lists_the_options():
    result = subprocess.run(["bash", str(INSTALL_SH), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for option in ("--uninstall", "--purge", "--no-start", "--dry-run", "--install-driver", "--join", "--gateway-key-file"):
        assert option in result.stdout


def test_join_without_the_gateways_admin_key_fails_before_changing_anything():
    result = subprocess.run(["bash", str(INSTALL_SH), "--dry-run", "--join", "https://gw.example"], capture_output=True,
                            text=True)
    assert result.returncode != 0 and "--join needs --gateway-key-file" in result.stderr


def test_unknown_option_fails():
    result = subprocess.run(["bash", str(INSTALL_SH), "--frobnicate"], capture_output=True, text=True)
    assert result.returncode != 0 and "unknown option: --frobnicate" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0 or Path("/opt/appliance").exists() or Path("/etc/appliance").exists(),
                    reason="needs root and a machine where the appliance is not installed")
def test_dry_run_prints_every_change_and_makes_none():
    result = subprocess.run(["bash", str(INSTALL_SH), "--dry-run", "--join", "https://gw.example",
                             "--gateway-key-file", "/root/gateway-admin.key"], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "APPLIANCE_MIN_DISK_GB": "1"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "would run: /usr/bin/python3 -m venv /opt/appliance" in out
    assert "would write /etc/appliance/config.toml" in out
    assert "would run: install -m 0644" in out and "appliance.service" in out
    assert ("would run: /opt/appliance/bin/appliance fleet join https://gw.example --config /etc/appliance/config.toml "
            "--admin-key-file /root/gateway-admin.key") in out
    assert not Path("/opt/appliance").exists() and not Path("/etc/appliance").exists()
