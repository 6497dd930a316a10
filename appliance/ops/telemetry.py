"""Live telemetry: NVML per GPU and psutil for the host, sampled about once a second into a ring buffer.

A reading is plain JSON-serialisable data (the control socket streams it, the TUI graphs its history):

    {"time", "gpu_status", "driver_version", "cuda_driver_version", "gpus": [...], "host": {...}}

Every GPU field is None where the GPU or driver does not report it (fans on passively cooled
boards, ECC on consumer cards), so one unsupported query never loses the others. Without a GPU or
driver, `gpu_status` says so in a sentence and the host half keeps coming.

NVML calls block (a PCIe throughput read waits out its sampling window), so readings are taken on
a daemon thread (`start()`), never on the asyncio loop; the loop only reads `latest`/`history()`.
`TelemetryCollector` exposes the latest reading as appliance_* Prometheus gauges.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from pathlib import Path
from time import monotonic

import psutil
from prometheus_client.core import GaugeMetricFamily

from appliance.ops.gpu_checks import import_pynvml

log = logging.getLogger("appliance.telemetry")

NVML_RETRY_S = 30.0  # a driver installed or loaded after start is picked up this long later at most
STOP_TIMEOUT_S = 5.0
HOST_ONLY = "showing host telemetry only"

# Suffixes of NVML's clock-event (formerly "throttle") reason bits, in words for operators.
# nvidia-ml-py names each bit nvmlClocksEventReason<suffix> (newer) and/or nvmlClocksThrottleReason<suffix>.
CLOCK_EVENT_REASONS = {
    "GpuIdle": "idle",
    "ApplicationsClocksSetting": "applications clocks setting",
    "SwPowerCap": "software power cap",
    "HwSlowdown": "hardware slowdown",
    "SyncBoost": "sync boost",
    "SwThermalSlowdown": "thermal (software)",
    "HwThermalSlowdown": "thermal (hardware)",
    "HwPowerBrakeSlowdown": "power brake (hardware)",
    "DisplayClockSetting": "display clock setting",
    "BoardLimit": "board limit",
    "Reliability": "reliability",
}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def decode_clock_event_reasons(nvml, mask: int) -> list[str]:
    """The reasons set in an NVML clock-event bitmask, in words; bits this table lacks stay visible in hex."""
    words, known = [], 0
    for suffix, word in CLOCK_EVENT_REASONS.items():
        bit = getattr(nvml, f"nvmlClocksEventReason{suffix}", None) or getattr(nvml, f"nvmlClocksThrottleReason{suffix}", None)
        if bit and mask & bit:
            words.append(word)
        known |= bit or 0
    if mask & ~known:
        words.append(f"unknown (0x{mask & ~known:x})")
    return words


def _read(nvml, function: str, *args):
    """nvml.<function>(*args), or None when it fails.

    NVML answers with a zoo of NVMLError subclasses (NotSupported, NoPermission, FunctionNotFound
    on older drivers, GpuIsLost) and older nvidia-ml-py releases lack newer functions, so any
    failure means "not reported" for this one field.
    """
    try:
        return getattr(nvml, function)(*args)
    except Exception:
        return None


def _cuda_version(version: int | None) -> str | None:
    # NVML encodes CUDA 12.4 as 12040.
    return None if version is None else f"{version // 1000}.{version % 1000 // 10}"


def _milli(value: int | None) -> float | None:
    return None if value is None else value / 1000


def _kb_to_bytes(value: int | None) -> float | None:
    return None if value is None else value * 1024.0


def _process_name(pid: int) -> str | None:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:  # gone already, or another user's / another PID namespace's
        return None


def read_gpu(nvml, index: int, handle) -> dict:
    """Everything NVML reports about one GPU; None for each field it does not."""
    utilization = _read(nvml, "nvmlDeviceGetUtilizationRates", handle)
    memory = _read(nvml, "nvmlDeviceGetMemoryInfo", handle)
    # The "throttle" names are deprecated for "clock event" ones; a given nvidia-ml-py has either or both.
    reasons_function = ("nvmlDeviceGetCurrentClocksEventReasons" if hasattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons")
                        else "nvmlDeviceGetCurrentClocksThrottleReasons")
    reasons = _read(nvml, reasons_function, handle)
    name = _read(nvml, "nvmlDeviceGetName", handle)
    uuid = _read(nvml, "nvmlDeviceGetUUID", handle)
    processes = _read(nvml, "nvmlDeviceGetComputeRunningProcesses", handle)
    return {
        "index": index,
        "name": None if name is None else _text(name),
        "uuid": None if uuid is None else _text(uuid),
        "utilization_pct": None if utilization is None else utilization.gpu,
        "memory_utilization_pct": None if utilization is None else utilization.memory,
        "memory_used_bytes": None if memory is None else memory.used,
        "memory_total_bytes": None if memory is None else memory.total,
        "temperature_c": _read(nvml, "nvmlDeviceGetTemperature", handle, nvml.NVML_TEMPERATURE_GPU),
        "temperature_slowdown_c": _read(nvml, "nvmlDeviceGetTemperatureThreshold", handle,
                                        nvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN),
        "temperature_shutdown_c": _read(nvml, "nvmlDeviceGetTemperatureThreshold", handle,
                                        nvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN),
        "power_w": _milli(_read(nvml, "nvmlDeviceGetPowerUsage", handle)),  # NVML speaks milliwatts
        "power_limit_w": _milli(_read(nvml, "nvmlDeviceGetEnforcedPowerLimit", handle)),
        "sm_clock_mhz": _read(nvml, "nvmlDeviceGetClockInfo", handle, nvml.NVML_CLOCK_SM),
        "sm_clock_max_mhz": _read(nvml, "nvmlDeviceGetMaxClockInfo", handle, nvml.NVML_CLOCK_SM),
        "memory_clock_mhz": _read(nvml, "nvmlDeviceGetClockInfo", handle, nvml.NVML_CLOCK_MEM),
        "fan_pct": _read(nvml, "nvmlDeviceGetFanSpeed", handle),
        "throttle_reasons": None if reasons is None else decode_clock_event_reasons(nvml, reasons),
        # Volatile counts (since the driver loaded), as `appliance health` judges them.
        "ecc_corrected": _read(nvml, "nvmlDeviceGetTotalEccErrors", handle,
                               nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, nvml.NVML_VOLATILE_ECC),
        "ecc_uncorrected": _read(nvml, "nvmlDeviceGetTotalEccErrors", handle,
                                 nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC),
        "pcie_tx_bytes_s": _kb_to_bytes(_read(nvml, "nvmlDeviceGetPcieThroughput", handle, nvml.NVML_PCIE_UTIL_TX_BYTES)),
        "pcie_rx_bytes_s": _kb_to_bytes(_read(nvml, "nvmlDeviceGetPcieThroughput", handle, nvml.NVML_PCIE_UTIL_RX_BYTES)),
        "processes": None if processes is None else [
            {"pid": p.pid, "name": _process_name(p.pid), "used_memory_bytes": p.usedGpuMemory} for p in processes],
    }


def _disk(path: Path) -> dict:
    try:
        usage = psutil.disk_usage(str(path))
    except OSError:  # not created yet (a fresh state folder) or unmounted: show the path, no numbers
        return {"path": str(path), "used_bytes": None, "total_bytes": None, "free_bytes": None}
    return {"path": str(path), "used_bytes": usage.used, "total_bytes": usage.total, "free_bytes": usage.free}


def _net_bytes() -> tuple[int, int]:
    # Loopback is left out: it is this box talking to itself (local clients, the health canary).
    counters = [c for nic, c in psutil.net_io_counters(pernic=True).items() if not nic.startswith("lo")]
    return sum(c.bytes_recv for c in counters), sum(c.bytes_sent for c in counters)


def _rate(now: int, before: int, seconds: float) -> float | None:
    # A counter that went down (interface removed, counters reset) gives no honest rate.
    return (now - before) / seconds if now >= before and seconds > 0 else None


class Telemetry:
    """Samples GPUs and host into a ring buffer of `history_s / interval_s` readings."""

    def __init__(self, disk_paths: list[Path], history_s: int = 900, interval_s: float = 1.0,
                 nvml_module=import_pynvml):
        self.disk_paths = [Path(p) for p in disk_paths]
        self.interval_s = interval_s
        self._nvml_module = nvml_module
        self._nvml = None  # the initialised pynvml module, or None while NVML is not up
        self._next_nvml_init = 0.0  # monotonic time of the next nvmlInit attempt
        self._gpu_status = ""  # why NVML is not up, once it has been tried
        self._previous_net: tuple[float, int, int] | None = None  # (monotonic, rx, tx) of the last reading
        self._readings: deque[dict] = deque(maxlen=math.ceil(history_s / interval_s))
        self._readings_lock = threading.Lock()  # short: guards the deque only, so readers never wait on NVML
        self._sample_lock = threading.Lock()  # one reading at a time, so deltas pair consecutive samples
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- readings ----------------------------------------------------------------------------

    def sample(self) -> dict:
        """Take one reading now (blocks on NVML and psutil), keep it in the history and return it."""
        with self._sample_lock:
            reading = {"time": time.time(), **self._read_gpus(), "host": self._read_host()}
        with self._readings_lock:
            self._readings.append(reading)
        return reading

    @property
    def latest(self) -> dict | None:
        with self._readings_lock:
            return self._readings[-1] if self._readings else None

    def history(self, seconds: float | None = None) -> list[dict]:
        """Readings, oldest first; only those of the last `seconds` when given."""
        with self._readings_lock:
            readings = list(self._readings)
        if seconds is None:
            return readings
        since = time.time() - seconds
        return [r for r in readings if r["time"] >= since]

    # -- the sampling thread -----------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
            if self._thread.is_alive():
                # Stuck inside NVML (a lost GPU): shutting NVML down under it could crash the process.
                log.warning("telemetry thread did not stop within %.0f s; leaving NVML initialised", STOP_TIMEOUT_S)
                return
            self._thread = None
        with self._sample_lock:
            self._shutdown_nvml()

    def _run(self) -> None:
        next_at = monotonic()
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:  # keep sampling: one bad reading must not end telemetry for the service's life
                log.exception("telemetry sample failed")
            # Scheduled from the start of the previous slot, so slow NVML reads do not make it drift.
            next_at = max(next_at + self.interval_s, monotonic())
            self._stop.wait(next_at - monotonic())

    # -- NVML --------------------------------------------------------------------------------

    def _ensure_nvml(self):
        """The initialised NVML module, initialising it at most every NVML_RETRY_S; None if not up."""
        if self._nvml is not None or monotonic() < self._next_nvml_init:
            return self._nvml
        self._next_nvml_init = monotonic() + NVML_RETRY_S
        nvml = self._nvml_module()
        if nvml is None:
            self._gpu_status = f"nvidia-ml-py is not installed, so GPU telemetry is off; {HOST_ONLY}"
            return None
        try:
            nvml.nvmlInit()
        except Exception as e:  # NVMLError_LibraryNotFound, _DriverNotLoaded, _NoPermission, ...
            self._gpu_status = f"no NVIDIA GPU or driver found (nvidia-ml-py could not initialise NVML: {e}); {HOST_ONLY}"
            return None
        self._nvml = nvml
        return nvml

    def _shutdown_nvml(self) -> None:
        if self._nvml is not None:
            _read(self._nvml, "nvmlShutdown")
            self._nvml = None

    def _read_gpus(self) -> dict:
        nvml = self._ensure_nvml()
        if nvml is None:
            return {"gpu_status": self._gpu_status, "driver_version": None, "cuda_driver_version": None, "gpus": []}
        driver = _read(nvml, "nvmlSystemGetDriverVersion")
        versions = {"driver_version": None if driver is None else _text(driver),
                    "cuda_driver_version": _cuda_version(_read(nvml, "nvmlSystemGetCudaDriverVersion"))}
        try:
            count = nvml.nvmlDeviceGetCount()
        except Exception as e:  # the driver went away under us: start over, as after a failed init
            self._shutdown_nvml()
            self._gpu_status = f"NVML stopped answering ({e}); {HOST_ONLY}"
            return {"gpu_status": self._gpu_status, **versions, "gpus": []}
        gpus, problems = [], []
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
            except Exception as e:  # one fallen-off GPU (GpuIsLost) must not hide the others
                problems.append(f"GPU {index} is not answering ({e})")
                continue
            gpus.append(read_gpu(nvml, index, handle))
        if not count:
            problems.append(f"NVML is up but found no NVIDIA GPU; {HOST_ONLY}")
        return {"gpu_status": "; ".join(problems) or "ok", **versions, "gpus": gpus}

    # -- host --------------------------------------------------------------------------------

    def _read_host(self) -> dict:
        # cpu_percent(interval=None) measures since this thread's previous call; the first has no baseline.
        cpu_pct = psutil.cpu_percent(interval=None)
        memory, swap = psutil.virtual_memory(), psutil.swap_memory()
        now, (rx, tx) = monotonic(), _net_bytes()
        previous, self._previous_net = self._previous_net, (now, rx, tx)
        rx_rate = tx_rate = None
        if previous is not None:
            before, rx_before, tx_before = previous
            rx_rate, tx_rate = _rate(rx, rx_before, now - before), _rate(tx, tx_before, now - before)
        return {
            "cpu_pct": None if previous is None else cpu_pct,
            "cpu_count": psutil.cpu_count(),
            "load_avg": list(psutil.getloadavg()),
            "memory_used_bytes": memory.used,
            "memory_total_bytes": memory.total,
            "memory_available_bytes": memory.available,
            "swap_used_bytes": swap.used,
            "swap_total_bytes": swap.total,
            "disks": [_disk(p) for p in self.disk_paths],
            "net_rx_bytes_s": rx_rate,
            "net_tx_bytes_s": tx_rate,
        }


# -- Prometheus ------------------------------------------------------------------------------

# (metric, help, reading field, scale to base units)
GPU_GAUGES = [
    ("appliance_gpu_utilization_ratio", "GPU busy fraction over the last sample period.", "utilization_pct", 0.01),
    ("appliance_gpu_memory_used_bytes", "GPU memory in use.", "memory_used_bytes", 1),
    ("appliance_gpu_memory_total_bytes", "GPU memory in all.", "memory_total_bytes", 1),
    ("appliance_gpu_temperature_celsius", "GPU core temperature.", "temperature_c", 1),
    ("appliance_gpu_temperature_slowdown_celsius", "Temperature at which the GPU slows down.", "temperature_slowdown_c", 1),
    ("appliance_gpu_power_watts", "GPU power draw.", "power_w", 1),
    ("appliance_gpu_power_limit_watts", "GPU enforced power limit.", "power_limit_w", 1),
    ("appliance_gpu_sm_clock_hertz", "GPU SM clock.", "sm_clock_mhz", 1e6),
    ("appliance_gpu_memory_clock_hertz", "GPU memory clock.", "memory_clock_mhz", 1e6),
]
HOST_GAUGES = [
    ("appliance_host_cpu_ratio", "Host CPU busy fraction over the last sample period.", "cpu_pct", 0.01),
    ("appliance_host_memory_used_bytes", "Host memory in use.", "memory_used_bytes", 1),
    ("appliance_host_memory_total_bytes", "Host memory in all.", "memory_total_bytes", 1),
]


class TelemetryCollector:
    """appliance_* gauges from the latest reading, read when Prometheus scrapes; None values are left out."""

    def __init__(self, telemetry: Telemetry):
        self.telemetry = telemetry

    def collect(self):
        reading = self.telemetry.latest or {"gpus": [], "host": {}}  # before the first reading: the names alone
        gpus = reading["gpus"]
        for metric, doc, field, scale in GPU_GAUGES:
            family = GaugeMetricFamily(metric, doc, labels=["gpu", "name"])
            for gpu in gpus:
                if gpu[field] is not None:
                    family.add_metric([str(gpu["index"]), gpu["name"] or ""], gpu[field] * scale)
            yield family  # declared without a GPU too: the shipped dashboards and alerts name it
        ecc = GaugeMetricFamily("appliance_gpu_ecc_errors", "GPU memory ECC errors since the driver loaded.",
                                labels=["gpu", "name", "type"])
        for gpu in gpus:
            for kind in ("corrected", "uncorrected"):
                if gpu[f"ecc_{kind}"] is not None:
                    ecc.add_metric([str(gpu["index"]), gpu["name"] or "", kind], gpu[f"ecc_{kind}"])
        yield ecc
        throttle = GaugeMetricFamily("appliance_gpu_throttle", "1 for each reason the GPU's clocks are held back now.",
                                     labels=["gpu", "name", "reason"])
        for gpu in gpus:
            for reason in gpu["throttle_reasons"] or []:
                throttle.add_metric([str(gpu["index"]), gpu["name"] or "", reason], 1.0)
        yield throttle
        for metric, doc, field, scale in HOST_GAUGES:
            family = GaugeMetricFamily(metric, doc)
            if reading["host"].get(field) is not None:
                family.add_metric([], reading["host"][field] * scale)
            yield family
