"""dtype = "auto": bfloat16 where the hardware computes it natively, float32 elsewhere; settings refused by name."""

import pytest

from engine.config import EngineConfig, cpu_has_native_bf16
from engine.errors import InvalidParameter

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma f16c\n"
ZEN4 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile amx_int8\n"


@pytest.mark.parametrize("cpuinfo, native", [(AVX2_ONLY, False), (ZEN4, True), (SAPPHIRE_RAPIDS, True)])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, cpuinfo, native):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert cpu_has_native_bf16(str(path)) is native


def test_without_a_cpuinfo_file_the_cpu_itself_is_asked(tmp_path):
    """As under the service's unit (ProcSubset=pid hides /proc/cpuinfo): CPUID, through torch, agrees with the flags."""
    assert cpu_has_native_bf16(str(tmp_path / "absent")) is cpu_has_native_bf16()


def test_auto_is_the_default_and_follows_the_hardware(monkeypatch):
    assert EngineConfig().dtype == "auto"
    monkeypatch.setattr("engine.config.cpu_has_native_bf16", lambda: False)
    assert EngineConfig().resolved_dtype == "float32"
    assert EngineConfig(device="cuda").resolved_dtype == "bfloat16"
    monkeypatch.setattr("engine.config.cpu_has_native_bf16", lambda: True)
    assert EngineConfig().resolved_dtype == "bfloat16"


def test_an_explicit_dtype_is_kept_whatever_the_hardware(monkeypatch):
    monkeypatch.setattr("engine.config.cpu_has_native_bf16", lambda: True)
    assert EngineConfig(dtype="float32").resolved_dtype == "float32"
    assert EngineConfig(dtype="float16", device="cuda").resolved_dtype == "float16"


def test_a_negative_number_of_state_snapshots_is_refused_by_name():
    with pytest.raises(InvalidParameter, match="num_state_snapshots must be 0") as refused:
        EngineConfig(num_state_snapshots=-1)
    assert refused.value.param == "num_state_snapshots"
