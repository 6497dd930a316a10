"""`appliance health`: each check against real files, a real HTTP server, and a fake NVML."""

import json

import pytest

from appliance.ops import gpu_checks
from appliance.ops import health
from appliance.cli.main import main as cli_main
from tests.appliance.conftest import free_port

PROC_TEXT = ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  {v}  Wed Feb 27 15:44:50 UTC 2024\n"
             "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")


@pytest.fixture
def machine(tmp_path):
    """Paths standing in for /proc/driver/nvidia/version, /etc/appliance/driver.env, /run/reboot-required."""
    class Machine:
        proc = tmp_path / "proc-version"
        pin = tmp_path / "driver.env"
        reboot = tmp_path / "reboot-required"
        packages: dict = {}

        def load(self, version):
            self.proc.write_text(PROC_TEXT.format(v=version))

        def pin_to(self, version, packages=("nvidia-driver-550", "libnvidia-compute-550")):
            self.pin.write_text(f"# written by install.sh\nDRIVER_VERSION={version}\n"
                                f"PACKAGES='{' '.join(packages)}'\nPINNED_AT=2026-01-01T00:00:00Z\n")

        def install(self, version, packages=("nvidia-driver-550", "libnvidia-compute-550")):
            self.packages = {p: f"{version}-0ubuntu1" for p in packages}

        def check(self):
            return gpu_checks.check_driver(self.proc, self.pin, self.reboot,
                                       package_versions=lambda names: {p: v for p, v in self.packages.items() if p in names})
    return Machine()


def test_driver_without_gpu_is_not_applicable(machine):
    check = machine.check()
    assert check.status == health.NA and check.message == "no NVIDIA GPU/driver on this machine"


def test_driver_as_pinned_is_ok(machine):
    machine.load("550.54.15"), machine.pin_to("550.54.15"), machine.install("550.54.15")
    check = machine.check()
    assert check.status == health.OK and "550.54.15" in check.message


def test_driver_packages_upgraded_is_drift_and_pending_reboot(machine):
    machine.load("550.54.15"), machine.pin_to("550.54.15"), machine.install("550.90.07")
    check = machine.check()
    assert check.status == health.FAIL
    assert "changed: pinned 550.54.15, installed now 550.90.07" in check.message
    assert "reboot is pending" in check.message


def test_driver_running_other_than_pinned(machine):
    machine.load("535.183.01"), machine.pin_to("550.54.15")
    check = machine.check()
    assert check.status == health.FAIL and "running driver 535.183.01 is not the pinned 550.54.15" in check.message


def test_pinned_packages_removed(machine):
    machine.load("550.54.15"), machine.pin_to("550.54.15"), machine.install("550.54.15", ["nvidia-driver-550"])
    check = machine.check()
    assert check.status == health.FAIL and "no longer installed: libnvidia-compute-550" in check.message


def test_pinned_but_not_loaded(machine):
    machine.pin_to("550.54.15"), machine.install("550.54.15")
    check = machine.check()
    assert check.status == health.FAIL and "not loaded" in check.message


def test_reboot_required_file_warns(machine):
    machine.load("550.54.15"), machine.pin_to("550.54.15"), machine.install("550.54.15")
    machine.reboot.write_text("*** System restart required ***\n")
    assert machine.check().status == health.WARN


def test_driver_loaded_but_not_pinned_warns(machine):
    machine.load("550.54.15")
    check = machine.check()
    assert check.status == health.WARN and "not pinned" in check.message


def test_upstream_version_of_debian_and_ubuntu_packages():
    assert gpu_checks.upstream_version("550.54.15-0ubuntu1") == "550.54.15"
    assert gpu_checks.upstream_version("1:535.183.01-1~deb12u1") == "535.183.01"


class FakeNVML:
    NVML_TEMPERATURE_GPU = 0
    NVML_TEMPERATURE_THRESHOLD_SLOWDOWN = 1
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0

    def __init__(self, temps=(60,), ecc=(0,), init_error=None):
        self.temps, self.ecc, self.init_error = temps, ecc, init_error

    def nvmlInit(self):
        if self.init_error:
            raise RuntimeError(self.init_error)

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return len(self.temps)

    def nvmlSystemGetDriverVersion(self):
        return b"550.54.15"

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return "NVIDIA H100"

    def nvmlDeviceGetTemperature(self, h, sensor):
        return self.temps[h]

    def nvmlDeviceGetTemperatureThreshold(self, h, kind):
        return 90

    def nvmlDeviceGetTotalEccErrors(self, h, kind, counter):
        return self.ecc[h]


def test_nvml_without_module_or_gpu_is_not_applicable(tmp_path):
    checks = gpu_checks.check_nvml(tmp_path / "none", nvml_module=lambda: None)
    assert [(c.name, c.status) for c in checks] == [("nvml", health.NA)]
    checks = gpu_checks.check_nvml(tmp_path / "none", nvml_module=lambda: FakeNVML(init_error="Driver Not Loaded"))
    assert checks[0].status == health.NA


def test_nvml_unreachable_with_a_driver_fails(machine):
    machine.load("550.54.15")
    checks = gpu_checks.check_nvml(machine.proc, nvml_module=lambda: FakeNVML(init_error="Driver/library version mismatch"))
    assert checks[0].status == health.FAIL and "mismatch" in checks[0].message


def test_nvml_temperatures_and_ecc(machine):
    machine.load("550.54.15")
    checks = {c.name: c for c in gpu_checks.check_nvml(machine.proc, nvml_module=lambda: FakeNVML(temps=(60, 92), ecc=(0, 3)))}
    assert checks["nvml"].status == health.OK and "2 GPU(s)" in checks["nvml"].message
    assert checks["gpu0.temperature"].status == health.OK and checks["gpu0.ecc"].status == health.OK
    assert checks["gpu1.temperature"].status == health.FAIL and "throttling" in checks["gpu1.temperature"].message
    assert checks["gpu1.ecc"].status == health.FAIL and "3 uncorrected" in checks["gpu1.ecc"].message


def test_cuda_check(machine):
    assert gpu_checks.check_cuda(proc_file=machine.proc).status == health.NA
    machine.load("550.54.15")
    assert gpu_checks.check_cuda(lambda: "12.4", lambda: "12.4", machine.proc).status == health.OK
    too_new = gpu_checks.check_cuda(lambda: "12.8", lambda: "12.4", machine.proc)
    assert too_new.status == health.FAIL and "supports up to 12.4" in too_new.message
    assert gpu_checks.check_cuda(lambda: None, lambda: "12.4", machine.proc).status == health.FAIL


def test_torch_cuda_version_read_without_import():
    import torch

    assert gpu_checks.torch_cuda_version() == torch.version.cuda


def test_disk_check(tmp_path):
    assert health.check_disk(tmp_path, min_free_bytes=1, warn_free_bytes=2).status == health.OK
    low = health.check_disk(tmp_path / "not" / "yet", min_free_bytes=1 << 60)
    assert low.status == health.FAIL and "free" in low.message
    assert health.check_disk(tmp_path, min_free_bytes=1, warn_free_bytes=1 << 60).status == health.WARN


def test_ready_and_canary_against_a_live_server(live_server, tmp_path):
    ready = health.check_ready(live_server.base_url)
    assert ready.status == health.OK, ready.message
    key_file = tmp_path / "health.key"
    assert health.check_canary(live_server.base_url, live_server.model, key_file).status == health.NA
    key_file.write_text(live_server.key + "\n")
    canary = health.check_canary(live_server.base_url, live_server.model, key_file)
    assert canary.status == health.OK and canary.details["completion_tokens"] == 1, canary.message
    key_file.write_text(live_server.keys["revoked"])
    bad = health.check_canary(live_server.base_url, live_server.model, key_file)
    assert bad.status == health.FAIL and "403" in bad.message


def test_ready_when_nothing_listens():
    check = health.check_ready(f"http://127.0.0.1:{free_port()}", timeout_s=2)
    assert check.status == health.FAIL and "does not answer" in check.message


def test_cli_stores_results_and_exit_code(live_server, tmp_path, capsys):
    state = tmp_path / "state"
    state.mkdir()
    (state / "health.key").write_text(live_server.key)
    config = tmp_path / "config.toml"
    config.write_text(f'model = "{live_server.app.config.model}"\nhost = "127.0.0.1"\nport = {live_server.app.public_port}\n')
    code = cli_main(["health", "--config", str(config), "--state-dir", str(state), "--json"])
    printed = json.loads(capsys.readouterr().out)
    stored = json.loads((state / "health.json").read_text())
    statuses = {c["name"]: c["status"] for c in stored["checks"]}
    assert statuses["ready"] == "ok" and statuses["canary"] == "ok"
    assert code == 0 and stored["ok"] is True and printed == stored
    assert health.load_report(state) == stored

    config.write_text(f'host = "127.0.0.1"\nport = {free_port()}\n')
    code = cli_main(["health", "--config", str(config), "--state-dir", str(state)])
    out = capsys.readouterr().out
    assert code == 1 and "FAIL  ready" in out and "something is wrong" in out
    assert json.loads((state / "health.json").read_text())["ok"] is False


def test_tls_check_warns_of_clear_text_and_of_a_certificate_about_to_expire(tmp_path):
    from datetime import datetime, timedelta, timezone

    from appliance.config import load_config
    from appliance.ops.certificates import generate

    clear = health.check_tls(load_config(None, {"tls": False, "host": "0.0.0.0", "state_dir": tmp_path}))
    assert clear.status == health.WARN and "API keys and prompts cross the network in clear text" in clear.message
    local = health.check_tls(load_config(None, {"tls": False, "state_dir": tmp_path}))
    assert local.status == health.OK and "loopback only (127.0.0.1:8000)" in local.message
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    config = load_config(None, {"tls_cert": str(cert), "tls_key": str(key), "state_dir": tmp_path})
    missing = health.check_tls(config)
    assert missing.status == health.FAIL and "does not exist" in missing.message
    info = generate(cert, key, [], days=400)
    ok = health.check_tls(config)
    assert ok.status == health.OK and info.fingerprint_sha256 in ok.message
    soon = health.check_tls(config, now=datetime.now(timezone.utc) + timedelta(days=390))
    assert soon.status == health.WARN and "expires in 10 days" in soon.message
    past = health.check_tls(config, now=datetime.now(timezone.utc) + timedelta(days=401))
    assert past.status == health.FAIL and "expired" in past.message


def test_the_key_store_check_says_whether_the_fleets_postgresql_answers(tmp_path, postgres_url):
    from appliance.config import Config
    from appliance.keys import KeyStore
    from appliance.ops.health import check_key_store
    from tests.appliance.conftest import free_port

    KeyStore(postgres_url).close()  # migrated
    up = check_key_store(Config(state_dir=tmp_path, keys_database_url=postgres_url))
    assert up.status == "ok" and "schema version" in up.message and "@" not in up.message.split("at ")[0]
    down = check_key_store(Config(state_dir=tmp_path, keys_database_url=f"postgresql://u:secret@127.0.0.1:{free_port()}/k",
                                  keys_outage_grace_s=120))
    assert down.status == "fail" and "keep working" in down.message and "120 s" in down.message
    assert "secret" not in down.message
    assert check_key_store(Config(state_dir=tmp_path)).status == "n/a"  # one box, no keys yet
