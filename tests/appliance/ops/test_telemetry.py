"""Telemetry: host numbers for real (this machine has no GPU), NVML decoding through a fake module.

The fake stands in for nvidia-ml-py only because NVML cannot run here; it answers the way
nvidia-ml-py does (milliwatts, KB/s, bytes for strings, NVMLError_NotSupported for what a GPU lacks).
"""

import json
import os
import time
from types import SimpleNamespace

import psutil
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from appliance.ops import telemetry
from appliance.ops.telemetry import Telemetry, TelemetryCollector, decode_clock_event_reasons

GONE_PID = 2**31 - 1  # no such process
H100 = "NVIDIA H100 80GB HBM3"


class NVMLError_NotSupported(Exception):
    """Named as nvidia-ml-py names it."""


class NVMLError_LibraryNotFound(Exception):
    """Named as nvidia-ml-py names it."""


class FakeNVML:
    """One H100 as nvidia-ml-py reports it; `unsupported` names functions that raise NotSupported."""

    NVML_TEMPERATURE_GPU = 0
    NVML_TEMPERATURE_THRESHOLD_SHUTDOWN = 0
    NVML_TEMPERATURE_THRESHOLD_SLOWDOWN = 1
    NVML_CLOCK_SM, NVML_CLOCK_MEM = 1, 2
    NVML_MEMORY_ERROR_TYPE_CORRECTED, NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 0, 1
    NVML_VOLATILE_ECC = 0
    NVML_PCIE_UTIL_TX_BYTES, NVML_PCIE_UTIL_RX_BYTES = 0, 1
    nvmlClocksEventReasonGpuIdle = 0x1
    nvmlClocksEventReasonSwPowerCap = 0x4
    nvmlClocksEventReasonHwSlowdown = 0x8
    nvmlClocksEventReasonSwThermalSlowdown = 0x20

    def __init__(self, init_failures: int = 0, unsupported=("nvmlDeviceGetFanSpeed",)):
        self.init_failures = init_failures
        self.unsupported = set(unsupported)
        self.init_calls = 0
        self.shutdowns = 0

    def __getattribute__(self, name):
        if name in object.__getattribute__(self, "unsupported"):
            def not_supported(*args):
                raise NVMLError_NotSupported("Not Supported")
            return not_supported
        return object.__getattribute__(self, name)

    def nvmlInit(self):
        self.init_calls += 1
        if self.init_calls <= self.init_failures:
            raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self):
        return b"550.54.15"

    def nvmlSystemGetCudaDriverVersion(self):
        return 12040

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, index):
        return f"handle{index}"

    def nvmlDeviceGetName(self, handle):
        return H100.encode()

    def nvmlDeviceGetUUID(self, handle):
        return "GPU-0c1d"

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=87, memory=40)

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=60 << 30, total=80 << 30)

    def nvmlDeviceGetTemperature(self, handle, sensor):
        return 71

    def nvmlDeviceGetTemperatureThreshold(self, handle, kind):
        return {self.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN: 87, self.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN: 92}[kind]

    def nvmlDeviceGetPowerUsage(self, handle):
        return 312_500  # milliwatts

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        return 700_000

    def nvmlDeviceGetClockInfo(self, handle, clock):
        return {self.NVML_CLOCK_SM: 1980, self.NVML_CLOCK_MEM: 2619}[clock]

    def nvmlDeviceGetMaxClockInfo(self, handle, clock):
        return 1980

    def nvmlDeviceGetFanSpeed(self, handle):
        return 30

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        return self.nvmlClocksEventReasonSwPowerCap | self.nvmlClocksEventReasonSwThermalSlowdown

    def nvmlDeviceGetTotalEccErrors(self, handle, kind, counter):
        return {self.NVML_MEMORY_ERROR_TYPE_CORRECTED: 5, self.NVML_MEMORY_ERROR_TYPE_UNCORRECTED: 0}[kind]

    def nvmlDeviceGetPcieThroughput(self, handle, counter):
        return {self.NVML_PCIE_UTIL_TX_BYTES: 1000, self.NVML_PCIE_UTIL_RX_BYTES: 250}[counter]  # KB/s

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return [SimpleNamespace(pid=os.getpid(), usedGpuMemory=2 << 30), SimpleNamespace(pid=GONE_PID, usedGpuMemory=None)]


# -- no GPU here: the host half is real --------------------------------------------------------

def test_without_gpu_it_says_so_and_reports_the_host(tmp_path):
    t = Telemetry([tmp_path])
    first = t.sample()
    assert first["gpu_status"].startswith("no NVIDIA GPU or driver found")
    assert "showing host telemetry only" in first["gpu_status"]
    assert first["gpus"] == [] and first["driver_version"] is None
    host = first["host"]
    assert host["memory_total_bytes"] == psutil.virtual_memory().total
    assert host["cpu_count"] == psutil.cpu_count() and len(host["load_avg"]) == 3
    assert host["cpu_pct"] is None and host["net_rx_bytes_s"] is None  # no previous sample to compare with
    [disk] = host["disks"]
    assert disk["path"] == str(tmp_path) and disk["total_bytes"] == psutil.disk_usage(str(tmp_path)).total
    assert 0 < disk["used_bytes"] < disk["total_bytes"] and 0 < disk["free_bytes"] < disk["total_bytes"]
    time.sleep(0.05)
    second = t.sample()["host"]
    assert 0 <= second["cpu_pct"] <= 100
    assert second["net_rx_bytes_s"] >= 0 and second["net_tx_bytes_s"] >= 0
    json.dumps(first)
    t.stop()


def test_without_nvidia_ml_py_it_says_so(tmp_path):
    reading = Telemetry([tmp_path], nvml_module=lambda: None).sample()
    assert reading["gpu_status"].startswith("nvidia-ml-py is not installed") and reading["gpus"] == []


def test_a_missing_disk_path_is_listed_without_numbers(tmp_path):
    disks = Telemetry([tmp_path / "not-yet"]).sample()["host"]["disks"]
    assert disks == [{"path": str(tmp_path / "not-yet"), "used_bytes": None, "total_bytes": None, "free_bytes": None}]


# -- history -------------------------------------------------------------------------------------

def test_ring_buffer_keeps_history_s_over_interval_s_readings(tmp_path):
    t = Telemetry([tmp_path], history_s=3, interval_s=1)
    readings = [t.sample() for _ in range(5)]
    assert t.history() == readings[-3:] and t.latest is readings[-1]


def test_history_of_the_last_seconds_filters_by_reading_time(tmp_path):
    t = Telemetry([tmp_path])
    assert t.latest is None and t.history() == []
    old, recent, now = t.sample(), t.sample(), t.sample()
    old["time"] -= 60
    recent["time"] -= 30
    assert t.history(45) == [recent, now]
    assert t.history(10) == [now]
    assert t.history() == [old, recent, now]


def test_start_samples_in_the_background_until_stop(tmp_path):
    nvml = FakeNVML()
    t = Telemetry([tmp_path], interval_s=0.02, nvml_module=lambda: nvml)
    t.start()
    deadline = time.monotonic() + 5
    while len(t.history()) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    t.stop()
    count = len(t.history())
    assert count >= 3 and t.latest["gpu_status"] == "ok"
    assert nvml.init_calls == 1 and nvml.shutdowns == 1  # initialised once, not per sample
    time.sleep(0.1)
    assert len(t.history()) == count


# -- NVML decoding -------------------------------------------------------------------------------

def test_gpu_reading_in_units_and_words(tmp_path):
    reading = Telemetry([tmp_path], nvml_module=FakeNVML).sample()
    assert reading["gpu_status"] == "ok"
    assert (reading["driver_version"], reading["cuda_driver_version"]) == ("550.54.15", "12.4")
    [gpu] = reading["gpus"]
    assert gpu["index"] == 0 and gpu["name"] == H100 and gpu["uuid"] == "GPU-0c1d"
    assert (gpu["utilization_pct"], gpu["memory_utilization_pct"]) == (87, 40)
    assert (gpu["memory_used_bytes"], gpu["memory_total_bytes"]) == (60 << 30, 80 << 30)
    assert (gpu["temperature_c"], gpu["temperature_slowdown_c"], gpu["temperature_shutdown_c"]) == (71, 87, 92)
    assert (gpu["power_w"], gpu["power_limit_w"]) == (312.5, 700.0)
    assert (gpu["sm_clock_mhz"], gpu["sm_clock_max_mhz"], gpu["memory_clock_mhz"]) == (1980, 1980, 2619)
    assert gpu["throttle_reasons"] == ["software power cap", "thermal (software)"]
    assert (gpu["ecc_corrected"], gpu["ecc_uncorrected"]) == (5, 0)
    assert (gpu["pcie_tx_bytes_s"], gpu["pcie_rx_bytes_s"]) == (1000 * 1024, 250 * 1024)
    assert gpu["processes"] == [
        {"pid": os.getpid(), "name": psutil.Process().name(), "used_memory_bytes": 2 << 30},
        {"pid": GONE_PID, "name": None, "used_memory_bytes": None},
    ]
    json.dumps(reading)


def test_unsupported_fields_become_none_and_the_rest_stay(tmp_path):
    unsupported = ("nvmlDeviceGetFanSpeed", "nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetPcieThroughput",
                   "nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetComputeRunningProcesses")
    [gpu] = Telemetry([tmp_path], nvml_module=lambda: FakeNVML(unsupported=unsupported)).sample()["gpus"]
    for field in ("fan_pct", "ecc_corrected", "ecc_uncorrected", "pcie_tx_bytes_s", "pcie_rx_bytes_s",
                  "throttle_reasons", "processes"):
        assert gpu[field] is None, field
    assert gpu["temperature_c"] == 71 and gpu["power_w"] == 312.5 and gpu["utilization_pct"] == 87


def test_clock_event_reasons_decode_with_the_real_module_constants():
    pynvml = pytest.importorskip("pynvml")
    mask = pynvml.nvmlClocksThrottleReasonGpuIdle | pynvml.nvmlClocksThrottleReasonHwSlowdown
    assert decode_clock_event_reasons(pynvml, mask) == ["idle", "hardware slowdown"]
    assert decode_clock_event_reasons(pynvml, pynvml.nvmlClocksThrottleReasonHwThermalSlowdown) == ["thermal (hardware)"]
    assert decode_clock_event_reasons(pynvml, 0) == []
    assert decode_clock_event_reasons(FakeNVML(), 0x4 | 0x8000) == ["software power cap", "unknown (0x8000)"]


def test_failed_init_is_retried_after_30_s_not_every_sample(tmp_path, monkeypatch):
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(telemetry, "monotonic", lambda: clock.now)
    nvml = FakeNVML(init_failures=1)
    t = Telemetry([tmp_path], nvml_module=lambda: nvml)
    assert "NVML Shared Library Not Found" in t.sample()["gpu_status"]
    clock.now += 10
    assert t.sample()["gpus"] == [] and nvml.init_calls == 1
    clock.now += 21  # the driver has appeared meanwhile
    assert t.sample()["gpu_status"] == "ok" and nvml.init_calls == 2
    clock.now += 60
    assert len(t.sample()["gpus"]) == 1 and nvml.init_calls == 2


def test_nvml_that_stops_answering_is_shut_down_and_reported(tmp_path):
    nvml = FakeNVML(unsupported=("nvmlDeviceGetCount",))
    reading = Telemetry([tmp_path], nvml_module=lambda: nvml).sample()
    assert reading["gpu_status"].startswith("NVML stopped answering") and reading["gpus"] == []
    assert nvml.shutdowns == 1 and reading["host"]["memory_total_bytes"] > 0


# -- Prometheus ----------------------------------------------------------------------------------

def scrape(t: Telemetry) -> tuple[str, dict]:
    """The exposition text, and its samples as {(name, (label values...)): value}."""
    registry = CollectorRegistry()
    registry.register(TelemetryCollector(t))
    text = generate_latest(registry).decode()
    samples = {(s.name, tuple(s.labels.values())): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    return text, samples


def test_collector_exposes_gpu_and_host_gauges_and_skips_unknowns(tmp_path):
    t = Telemetry([tmp_path], nvml_module=lambda: FakeNVML(unsupported=("nvmlDeviceGetEnforcedPowerLimit",)))
    text, samples = scrape(t)
    assert samples == {} and "# TYPE appliance_gpu_throttle gauge" in text  # nothing sampled yet: the names alone
    t.sample()
    t.sample()
    text, samples = scrape(t)
    gpu = ("0", H100)
    assert '# TYPE appliance_gpu_utilization_ratio gauge' in text
    assert samples[("appliance_gpu_utilization_ratio", gpu)] == 0.87
    assert samples[("appliance_gpu_memory_used_bytes", gpu)] == 60 << 30
    assert samples[("appliance_gpu_memory_total_bytes", gpu)] == 80 << 30
    assert samples[("appliance_gpu_temperature_celsius", gpu)] == 71
    assert samples[("appliance_gpu_power_watts", gpu)] == 312.5
    assert samples[("appliance_gpu_sm_clock_hertz", gpu)] == 1.98e9
    assert samples[("appliance_gpu_ecc_errors", (*gpu, "corrected"))] == 5
    assert samples[("appliance_gpu_ecc_errors", (*gpu, "uncorrected"))] == 0
    assert ("appliance_gpu_power_limit_watts", gpu) not in samples  # NVML does not report it: no sample
    assert samples[("appliance_gpu_throttle", (*gpu, "thermal (software)"))] == 1
    assert samples[("appliance_gpu_throttle", (*gpu, "software power cap"))] == 1
    assert 0 <= samples[("appliance_host_cpu_ratio", ())] <= 1
    assert samples[("appliance_host_memory_total_bytes", ())] == psutil.virtual_memory().total


def test_collector_without_gpu_has_host_samples_only(tmp_path):
    t = Telemetry([tmp_path])
    t.sample()
    text, samples = scrape(t)
    assert not any(name.startswith("appliance_gpu_") for name, _ in samples)
    assert "# TYPE appliance_gpu_utilization_ratio gauge" in text  # declared for the dashboards and alerts
    assert ("appliance_host_memory_used_bytes", ()) in samples
    assert ("appliance_host_cpu_ratio", ()) not in samples  # first sample: no CPU delta yet
