"""`appliance models plan`: Qwen3.6-35B-A3B's and Nemotron-3-Nano-30B-A3B's real configs planned from config.json alone
(KV cache and state slots counted from their layers), and tiny twins planned as the engine allocates them."""

import json

import pytest

from appliance.cli.main import main
from benchmarks.model_shapes import PLANNED
from engine import Engine, EngineConfig

# Per token, keys and values of each attention layer; per sequence, each recurrent layer's conv state (channels x
# 3 taps, bfloat16) and float32 recurrent state. Qwen3.6: 10 attention layers of 2 kv heads x 256; 30 Gated DeltaNet
# layers (q, k: 16 heads x 128, v: 32 x 128 -> 8192 channels; state 32 x 128 x 128). Nemotron: 6 attention layers
# of 2 x 128; 23 Mamba-2 layers (4096 + 2 x 8 groups x 128 -> 6144 channels; state 64 heads x 64 x 128).
REAL = {
    "qwen3.6-35b-a3b": (2 * 10 * 2 * 256 * 2, 30 * (8192 * 3 * 2 + 32 * 128 * 128 * 4)),
    "nemotron-3-nano-30b-a3b": (2 * 6 * 2 * 128 * 2, 23 * (6144 * 3 * 2 + 64 * 64 * 128 * 4)),
}


def plan(capsys, folder, *options: str) -> dict:
    assert main(["models", "plan", str(folder), *options, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", sorted(REAL))
def test_a_real_hybrid_config_is_planned_with_its_state_slots_beside_the_kv_cache(name, tmp_path, capsys):
    kv_per_token, state_per_sequence = REAL[name]
    PLANNED[name].config().save_pretrained(tmp_path)  # config.json only: no weights
    p = plan(capsys, tmp_path, "--kv-context", "8192")  # on cuda in bfloat16, 64 sequences
    assert (p["dtype"], p["state_slots"], p["state_snapshots"]) == ("bfloat16", 64, 64)
    assert (p["kv_bytes_per_token"], p["state_bytes_per_sequence"]) == (kv_per_token, state_per_sequence)
    assert p["kv_cache_bytes"] == (64 * 8192 // 16 + 1) * 16 * kv_per_token  # 64 sequences of 8192 tokens, null block
    assert p["state_bytes"] == (64 + 64) * state_per_sequence  # the slots, and as many snapshots for prefix caching
    assert 28e9 < p["weights_bytes"] / 2 < 36e9  # 31.6 B and 34.7 B parameters, counted on the meta device
    assert p["total_bytes"] == p["weights_bytes"] + p["kv_cache_bytes"] + p["state_bytes"] + p["activations_bytes"]


@pytest.mark.parametrize("name", sorted(PLANNED))
def test_a_tiny_twins_plan_is_what_the_engine_allocates(name, tmp_path, capsys):
    """Within kv_cache_bytes the state slots come first, one per sequence that may run, the KV blocks take the rest."""
    config = PLANNED[name].config(tiny=True)
    config.save_pretrained(tmp_path)
    p = plan(capsys, tmp_path, "--device", "cpu", "--dtype", "float32", "--max-num-seqs", "4", "--kv-cache-bytes",
             str(1 << 20))
    engine = Engine(EngineConfig(device="cpu", dtype="float32", max_num_seqs=4, kv_cache_bytes=1 << 20))
    model = engine.load_model(config).model
    try:
        assert p["state_bytes"] == engine.session.runner.state_bytes > 0 and engine.stats().state_slots_total == 4
        assert p["kv_cache_bytes"] == engine.kv_cache_bytes
        assert p["weights_bytes"] == sum(t.numel() * t.element_size() for t in model.parameters())
    finally:
        engine.unload_model()
