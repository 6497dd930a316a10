"""The GPU half of `appliance health`: the driver against its pin, NVML, torch's CUDA against the driver.

No heavy imports (no torch: its CUDA version is read from torch/version.py).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from appliance.ops.checks import FAIL, NA, OK, WARN, Check

PROC_DRIVER_VERSION = Path("/proc/driver/nvidia/version")
PINNED_DRIVER_FILE = Path("/etc/appliance/driver.env")  # written by install.sh
REBOOT_REQUIRED_FILE = Path("/run/reboot-required")
NO_GPU = "no NVIDIA GPU/driver on this machine"


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
