"""`appliance health`: is this box fit to serve? One function per check, results kept for the TUI.

Each check returns a `Check` with a status:
  ok    all is well
  warn  worth a look, not broken (exit code stays 0)
  fail  something is wrong (exit code 1)
  n/a   does not apply here (no NVIDIA GPU, no driver pinned, no health key)

The canary goes through the public API with the internal key `appliance-health`, whose secret
install.sh keeps in <state_dir>/health.key (mode 0640, owner appliance). Without that file the
check falls back to /ready, which itself needs a recent 1-token canary inside the service.

No heavy imports (no torch): it runs every minute from appliance-health.timer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx

from appliance.config import Config

OK, WARN, FAIL, NA = "ok", "warn", "fail", "n/a"

PROC_DRIVER_VERSION = Path("/proc/driver/nvidia/version")
PINNED_DRIVER_FILE = Path("/etc/appliance/driver.env")  # written by install.sh
REBOOT_REQUIRED_FILE = Path("/run/reboot-required")
HEALTH_KEY_NAME = "health.key"
RESULTS_NAME = "health.json"
MIN_FREE_BYTES = 2 << 30  # below this: fail
WARN_FREE_BYTES = 10 << 30  # below this: warn
MIN_FREE_FRACTION = 0.05
NO_GPU = "no NVIDIA GPU/driver on this machine"


@dataclass
class Check:
    name: str
    status: str
    message: str
    details: dict = field(default_factory=dict)


@dataclass
class Report:
    checked_at: str
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def to_dict(self) -> dict:
        return {"checked_at": self.checked_at, "ok": self.ok, "checks": [asdict(c) for c in self.checks]}


# -- the driver --------------------------------------------------------------------------------

VERSION_RE = re.compile(r"\b(\d{3,}\.\d+(?:\.\d+)?)\b")


def loaded_driver_version(proc_file: Path = PROC_DRIVER_VERSION) -> str | None:
    """The version of the NVIDIA kernel module that is running now, from /proc."""
    try:
        text = proc_file.read_text()
    except OSError:
        return None
    match = re.search(r"Kernel Module(?: for [^ ]+)?\s+(\d+\.\d+(?:\.\d+)?)", text) or VERSION_RE.search(text)
    return match.group(1) if match else None


def read_pin(pin_file: Path = PINNED_DRIVER_FILE) -> dict[str, str]:
    """install.sh's record: KEY=value lines (DRIVER_VERSION, PACKAGES, PINNED_AT)."""
    values = {}
    try:
        lines = pin_file.read_text().splitlines()
    except OSError:
        return values
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        values[key.strip()] = value.strip().strip("'\"")
    return values


def upstream_version(package_version: str) -> str | None:
    """'550.54.15-0ubuntu1' or '1:535.183.01-1~deb12u1' -> the NVIDIA version."""
    match = VERSION_RE.search(package_version.split(":", 1)[-1])
    return match.group(1) if match else None


def installed_package_versions(packages: list[str]) -> dict[str, str]:
    """Package -> installed version, via dpkg-query; packages not installed are left out."""
    if not packages or shutil.which("dpkg-query") is None:
        return {}
    result = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Version} ${db:Status-Status}\n", *packages],
                            capture_output=True, text=True, timeout=30)
    versions = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "installed":
            versions[parts[0]] = parts[1]
    return versions


def check_driver(proc_file: Path = PROC_DRIVER_VERSION, pin_file: Path = PINNED_DRIVER_FILE,
                 reboot_file: Path = REBOOT_REQUIRED_FILE, package_versions=installed_package_versions) -> Check:
    pin = read_pin(pin_file)
    pinned = pin.get("DRIVER_VERSION") or None
    packages = pin.get("PACKAGES", "").split()
    loaded = loaded_driver_version(proc_file)
    installed = package_versions(packages)
    installed_upstream = sorted({u for u in map(upstream_version, installed.values()) if u})
    details = {"loaded": loaded, "pinned": pinned, "packages": installed}

    if loaded is None and not pin:
        return Check("driver", NA, NO_GPU, details)
    problems = []
    if pinned and installed_upstream and installed_upstream != [pinned]:
        problems.append(f"the driver packages changed: pinned {pinned}, installed now {', '.join(installed_upstream)}"
                        " (were they unheld? `apt-mark showhold`)")
    missing = sorted(set(packages) - set(installed))
    if missing:
        problems.append(f"pinned driver packages are no longer installed: {', '.join(missing)}")
    if loaded and installed_upstream and installed_upstream != [loaded]:
        problems.append(f"a reboot is pending: the kernel runs driver {loaded}, the packages are at "
                        f"{', '.join(installed_upstream)}")
    elif loaded and pinned and loaded != pinned:
        problems.append(f"the running driver {loaded} is not the pinned {pinned}")
    if pinned and loaded is None:
        problems.append(f"the pinned driver {pinned} is not loaded (no {proc_file}); "
                        "a reboot may be pending, or the kernel module failed to load (`dmesg | grep -i nvidia`)")
    if problems:
        return Check("driver", FAIL, "; ".join(problems), details)
    if reboot_file.exists():
        return Check("driver", WARN, f"driver {loaded or pinned} as pinned, but the system asks for a reboot "
                                     f"({reboot_file})", details)
    if not pinned:
        return Check("driver", WARN, f"driver {loaded} is running but not pinned; re-run install.sh to pin it", details)
    return Check("driver", OK, f"driver {loaded or pinned} as pinned", details)


# -- NVML, temperatures, ECC -------------------------------------------------------------------


def import_pynvml():
    try:
        import pynvml  # from nvidia-ml-py (optional)
    except ImportError:
        return None
    return pynvml


def check_nvml(proc_file: Path = PROC_DRIVER_VERSION, nvml_module=import_pynvml) -> list[Check]:
    """NVML reachable; per GPU: temperature vs its slowdown threshold, uncorrected ECC errors."""
    gpu_expected = proc_file.exists()
    nvml = nvml_module()
    if nvml is None:
        if gpu_expected:
            return [Check("nvml", WARN, "nvidia-ml-py is not installed, so GPU telemetry is off "
                                        "(/opt/appliance/bin/pip install nvidia-ml-py)")]
        return [Check("nvml", NA, NO_GPU)]
    try:
        nvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        if not gpu_expected:
            return [Check("nvml", NA, NO_GPU, {"error": str(e)})]
        return [Check("nvml", FAIL, f"NVML is not reachable: {e}", {"error": str(e)})]
    checks = []
    try:
        count = nvml.nvmlDeviceGetCount()
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        checks.append(Check("nvml", OK, f"NVML reachable: {count} GPU(s), driver {driver}",
                            {"gpus": count, "driver": driver}))
        for i in range(count):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            checks.extend(_gpu_checks(nvml, i, handle))
    except Exception as e:
        checks.append(Check("nvml", FAIL, f"NVML query failed: {e}", {"error": str(e)}))
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass
    return checks


def _gpu_checks(nvml, index: int, handle) -> list[Check]:
    name = _text(nvml.nvmlDeviceGetName(handle))
    temp = nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
    try:
        slowdown = nvml.nvmlDeviceGetTemperatureThreshold(handle, nvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN)
    except Exception:
        slowdown = None
    details = {"name": name, "temperature_c": temp, "slowdown_c": slowdown}
    if slowdown and temp >= slowdown:
        temp_check = Check(f"gpu{index}.temperature", FAIL, f"GPU {index} ({name}) at {temp} °C, at or above its "
                                                            f"slowdown threshold {slowdown} °C: it is throttling", details)
    elif slowdown and temp >= slowdown - 5:
        temp_check = Check(f"gpu{index}.temperature", WARN, f"GPU {index} ({name}) at {temp} °C, near its "
                                                            f"slowdown threshold {slowdown} °C", details)
    else:
        temp_check = Check(f"gpu{index}.temperature", OK, f"GPU {index} ({name}) at {temp} °C", details)
    try:
        errors = nvml.nvmlDeviceGetTotalEccErrors(handle, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                                                  nvml.NVML_VOLATILE_ECC)
    except Exception:  # NVMLError_NotSupported on GPUs without ECC
        ecc_check = Check(f"gpu{index}.ecc", NA, f"GPU {index} does not report ECC")
    else:
        if errors:
            ecc_check = Check(f"gpu{index}.ecc", FAIL, f"GPU {index} has {errors} uncorrected ECC errors since the "
                                                       "driver loaded; drain it and reset the GPU or reboot",
                              {"uncorrected": errors})
        else:
            ecc_check = Check(f"gpu{index}.ecc", OK, f"GPU {index}: no uncorrected ECC errors", {"uncorrected": 0})
    return [temp_check, ecc_check]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- torch's CUDA vs the driver ----------------------------------------------------------------


def torch_cuda_version() -> str | None:
    """torch.version.cuda, read from torch/version.py without importing torch (seconds)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    try:
        text = (Path(spec.origin).parent / "version.py").read_text()
    except OSError:
        return None
    match = re.search(r"^cuda(?:: \S+)? = '([\d.]+)'", text, re.M)
    return match.group(1) if match else None


def driver_cuda_version() -> str | None:
    """The newest CUDA the driver supports, from nvidia-smi's header."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"CUDA Version:\s*([\d.]+)", out)
    return match.group(1) if match else None


def check_cuda(torch_cuda=torch_cuda_version, driver_cuda=driver_cuda_version,
               proc_file: Path = PROC_DRIVER_VERSION) -> Check:
    if not proc_file.exists():
        return Check("cuda", NA, NO_GPU)
    built = torch_cuda()
    supported = driver_cuda()
    details = {"torch_cuda": built, "driver_cuda": supported}
    if built is None:
        return Check("cuda", FAIL, "the installed torch has no CUDA support (a CPU build); re-run install.sh", details)
    if supported is None:
        return Check("cuda", WARN, f"torch needs CUDA {built}; could not read what the driver supports (nvidia-smi)",
                     details)
    if _version_tuple(built)[:2] > _version_tuple(supported)[:2]:
        return Check("cuda", FAIL, f"torch is built for CUDA {built} but the driver supports up to {supported}: "
                                   "install a newer driver (install.sh --install-driver=VERSION)", details)
    return Check("cuda", OK, f"torch CUDA {built} runs on this driver (supports up to {supported})", details)


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text))


# -- disk --------------------------------------------------------------------------------------


def check_disk(path: Path, min_free_bytes: int = MIN_FREE_BYTES, warn_free_bytes: int = WARN_FREE_BYTES) -> Check:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    free_gib = usage.free / (1 << 30)
    details = {"path": str(path), "free_bytes": usage.free, "total_bytes": usage.total}
    text = f"{free_gib:.1f} GiB free of {usage.total / (1 << 30):.1f} GiB for {path}"
    if usage.free < min_free_bytes or usage.free < usage.total * MIN_FREE_FRACTION:
        return Check("disk", FAIL, f"only {text}: free space (models, keys.db and logs need room)", details)
    if usage.free < warn_free_bytes:
        return Check("disk", WARN, f"{text}: getting low", details)
    return Check("disk", OK, text, details)


# -- the service -------------------------------------------------------------------------------


def local_base_url(config: Config) -> str:
    host = config.host
    if host in ("0.0.0.0", "", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.port}"


def check_ready(base_url: str, timeout_s: float = 10.0) -> Check:
    try:
        response = httpx.get(f"{base_url}/ready", timeout=timeout_s)
    except httpx.HTTPError as e:
        return Check("ready", FAIL, f"the service does not answer at {base_url} ({type(e).__name__}: {e}); "
                                    "`systemctl status appliance` and `journalctl -u appliance` say why",
                     {"url": base_url})
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code == 200:
        return Check("ready", OK, f"ready, serving {body.get('model')}", {"url": base_url, "body": body})
    reasons = "; ".join(body.get("reasons", [])) or f"HTTP {response.status_code}"
    return Check("ready", FAIL, f"not ready: {reasons}", {"url": base_url, "body": body})


def check_canary(base_url: str, model: str, key_file: Path, timeout_s: float = 60.0) -> Check:
    """A 1-token completion through the public API, authenticated like any client."""
    try:
        api_key = key_file.read_text().strip()
    except FileNotFoundError:
        return Check("canary", NA, f"no health key at {key_file} (install.sh creates it); /ready covers the "
                                   "service's own canary")
    except PermissionError:
        return Check("canary", NA, f"cannot read {key_file}: run as root or the appliance user")
    started = time.monotonic()
    try:
        response = httpx.post(
            f"{base_url}/v1/completions", timeout=timeout_s, headers={"Authorization": f"Bearer {api_key}"},
            json={"model": model, "prompt": "Hello", "max_tokens": 1, "temperature": 0},
        )
    except httpx.HTTPError as e:
        return Check("canary", FAIL, f"the canary request failed: {type(e).__name__}: {e}")
    latency = time.monotonic() - started
    details = {"status_code": response.status_code, "latency_s": round(latency, 3)}
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:300]
        return Check("canary", FAIL, f"the canary got HTTP {response.status_code}: {message}", details)
    usage = response.json().get("usage") or {}
    details["completion_tokens"] = usage.get("completion_tokens")
    return Check("canary", OK, f"1-token completion through the public API in {latency * 1000:.0f} ms", details)


# -- all of it ---------------------------------------------------------------------------------


def run_checks(config: Config, service: bool = True) -> Report:
    checks = [check_driver()]
    checks.extend(check_nvml())
    checks.append(check_cuda())
    checks.append(check_disk(config.state_dir))
    if service:
        base_url = local_base_url(config)
        checks.append(check_ready(base_url))
        checks.append(check_canary(base_url, config.model_name, config.state_dir / HEALTH_KEY_NAME))
    return Report(datetime.now(timezone.utc).isoformat(timespec="seconds"), checks)


def save_report(report: Report, state_dir: Path) -> Path:
    """Atomically replace <state_dir>/health.json (read by the TUI and the control API)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / RESULTS_NAME
    tmp = path.with_name(f".{RESULTS_NAME}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def load_report(state_dir: Path) -> dict | None:
    try:
        return json.loads((state_dir / RESULTS_NAME).read_text())
    except (OSError, ValueError):
        return None


def format_report(report: Report) -> str:
    marks = {OK: "ok  ", WARN: "WARN", FAIL: "FAIL", NA: "n/a "}
    width = max(len(c.name) for c in report.checks)
    lines = [f"{marks[c.status]}  {c.name.ljust(width)}  {c.message}" for c in report.checks]
    lines.append("all is well" if report.ok else "something is wrong: see the FAIL lines above")
    return "\n".join(lines)


# -- the command -------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    parser.add_argument("--config", type=Path, help="config file (default: /etc/appliance/config.toml if present)")
    parser.add_argument("--state-dir", type=Path, help="where health.json and health.key live (default: from the config)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-service", action="store_true", help="only the machine checks, not /ready and the canary")
    parser.add_argument("--no-save", action="store_true", help=f"do not write <state-dir>/{RESULTS_NAME}")


def run(args) -> int:
    import sys

    from appliance.config import ConfigError, load_config

    try:
        config = load_config(args.config, {"state_dir": args.state_dir})
    except ConfigError as e:
        print(f"appliance health: error: {e}", file=sys.stderr)
        return 2
    report = run_checks(config, service=not args.no_service)
    saved_note = None
    if not args.no_save:
        try:
            save_report(report, config.state_dir)
        except OSError as e:
            saved_note = f"(not saved: {e.strerror} for {config.state_dir / RESULTS_NAME})"
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_report(report))
    if saved_note:
        print(saved_note, file=sys.stderr)
    return 0 if report.ok else 1
