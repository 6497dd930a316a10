"""`appliance fleet gateway`: the files it writes and the unit systemd is given (smg itself runs in test_fleet.py)."""

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.cli.main import main
from appliance.fleet.gateway_unit import GatewayFiles, GatewaySettings, smg_command, unit_text


def test_smg_is_asked_for_cache_aware_routing_ready_probes_loopback_metrics_and_tls():
    settings = GatewaySettings(host="0.0.0.0", port=443, tls_cert="/etc/ssl/fleet.pem", tls_key="/etc/ssl/fleet.key")
    command = smg_command(settings, "s3cr3t-admin")
    flags = {part: command[i + 1] if i + 1 < len(command) and not command[i + 1].startswith("--") else True
             for i, part in enumerate(command) if part.startswith("--")}
    assert command[1] == "launch"
    assert flags["--policy"] == "cache_aware" and flags["--health-check-endpoint"] == "/ready"
    assert flags["--prometheus-host"] == "127.0.0.1" and flags["--tls-cert-path"] == "/etc/ssl/fleet.pem"
    assert flags["--control-plane-api-keys"].endswith(":admin:s3cr3t-admin")
    unit = unit_text(settings)
    assert "s3cr3t-admin" not in unit and "${SMG_ADMIN_KEY}" in unit  # the key comes from the 0600 environment file
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in unit  # port 443 as the appliance user
    # root's certificate key reaches smg as a systemd credential, not by its own (unreadable) path
    assert "LoadCredential=tls-key:/etc/ssl/fleet.key" in unit and "--tls-key-path %d/tls-key" in unit


def test_off_loopback_without_a_certificate_is_refused():
    with pytest.raises(ValueError, match="--tls-cert"):
        GatewaySettings(host="0.0.0.0", port=8443).check()
    GatewaySettings(host="127.0.0.1", port=8443).check()  # behind the operator's own TLS proxy


def test_the_command_writes_the_key_unit_and_description_and_keeps_the_key_on_a_rerun(tmp_path, capsys):
    args = ["fleet", "gateway", "--listen", "127.0.0.1:18443", "--root", str(tmp_path)]
    assert main(args) == 0
    files = GatewayFiles(tmp_path)
    key = files.admin_key.read_text().strip()
    assert len(key) >= 32 and stat.S_IMODE(files.admin_key.stat().st_mode) == 0o640
    assert stat.S_IMODE(files.environment.stat().st_mode) == 0o600 and key in files.environment.read_text()
    described = json.loads(files.description.read_text())
    assert described["url"] == "http://127.0.0.1:18443" and described["admin_key_file"] == str(files.admin_key)
    assert main(args) == 0
    assert files.admin_key.read_text().strip() == key  # boxes that joined keep working
    assert "appliance fleet join" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_unit(tmp_path):
    smg = str(Path(sys.executable).with_name("smg"))  # systemd checks that ExecStart's program exists
    unit = tmp_path / "appliance-gateway.service"
    (tmp_path / "cert.pem").write_text("not read by verify")
    unit.write_text(unit_text(GatewaySettings(host="127.0.0.1", port=18443, smg=smg, tls_cert=tmp_path / "cert.pem",
                                              tls_key=tmp_path / "key.pem"))
                    .replace("EnvironmentFile=/etc/appliance/gateway.env\n", "")
                    .replace("User=appliance\nGroup=appliance\n", ""))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
