"""The memory plan against what the engine really allocates, and the refusal's words."""

import pytest

from appliance.serving import memory_plan
from engine import Engine, EngineConfig
from tests.engine.architectures import build


@pytest.mark.parametrize("settings", [{"num_kv_blocks": 64}, {"kv_cache_bytes": 3 << 20}])
def test_the_planned_kv_cache_is_what_the_engine_allocates(tiny_model_path, settings):
    config = EngineConfig(dtype="float32", max_num_seqs=4, max_num_batched_tokens=256, **settings)
    need = memory_plan.needs(tiny_model_path, config, kv_context=4096)
    engine = Engine(config)
    engine.load_model(tiny_model_path)
    try:
        allocated_blocks = engine.stats().kv_blocks_total + 1  # the null block too
        assert need.kv_cache // (engine.kv_cache_bytes // allocated_blocks) == allocated_blocks
        assert need.weights == (tiny_model_path / "model.safetensors").stat().st_size  # stored and served in float32
        assert need.activations > 0 and need.total == need.weights + need.kv_cache + need.activations
    finally:
        engine.unload_model()


def test_a_multimodal_checkpoint_is_planned_as_the_language_model_the_engine_loads(tmp_path):
    """Gemma 3 (multimodal class, text served): its vision tower's bytes stay out of the plan; its KV blocks
    are one full and five sliding groups' layers."""
    build("gemma3").save_pretrained(tmp_path)
    config = EngineConfig(dtype="float32", num_kv_blocks=32, block_size=4)
    need = memory_plan.needs(tmp_path, config, kv_context=4096)
    engine = Engine(config)
    engine.load_model(tmp_path)
    try:
        model = engine.session.loaded.model
        assert need.weights == sum(p.numel() * p.element_size() for p in model.parameters())
        assert need.weights < (tmp_path / "model.safetensors").stat().st_size
        assert need.kv_cache == engine.kv_cache_bytes
    finally:
        engine.unload_model()


@pytest.mark.parametrize("family, vectors", [("qwen2_5_vl", 1), ("qwen3_vl", 3), ("qwen3_5", 1)])  # Qwen3-VL: 2 deepstack layers
def test_a_multimodal_checkpoint_whose_images_the_engine_runs_is_planned_with_its_vision_tower(family, vectors, tmp_path,
                                                                                               default_model_path):
    from tests.engine.vision_models import build_vlm

    build_vlm(family, tmp_path, default_model_path)
    config = EngineConfig(dtype="float32", num_kv_blocks=32, block_size=4)
    need = memory_plan.needs(tmp_path, config, kv_context=4096)
    engine = Engine(config)
    engine.load_model(tmp_path)
    try:
        loaded = engine.session.loaded
        vision_tower = sum(p.numel() * p.element_size() for p in loaded.vision.model.visual.parameters())
        text = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
        assert need.weights == (tmp_path / "model.safetensors").stat().st_size  # the whole file, vision tower too
        assert 0 <= need.weights - (text + vision_tower) < 16 << 10 < vision_tower  # less its header
        # the encoder cache's image embeddings (and deepstack features), at the language model's width, count with
        # the activations
        text_only = memory_plan.needs(tmp_path, EngineConfig(dtype="float32", num_kv_blocks=32, block_size=4,
                                                             encoder_cache_tokens=0), kv_context=4096)
        hidden = loaded.config.get_text_config().hidden_size
        assert need.activations - text_only.activations == config.encoder_cache_tokens * vectors * hidden * 4
    finally:
        engine.unload_model()


def test_the_refusal_says_what_is_needed_what_is_free_and_what_to_do():
    plan = memory_plan.Plan(budget=3 << 30, used={"big": 2 << 30}, device_free=20 << 30)
    assert plan.free == 1 << 30
    need = memory_plan.Needs(weights=1 << 30, kv_cache=512 << 20, activations=0)
    message = plan.refusal("mid", need, ["big"])
    assert message.startswith("mid needs 1.50 GiB (weights 1.00 GiB, KV cache 0.50 GiB, activations 0.00 GiB), "
                              "1.00 GiB free; unload big or lower its kv_cache_bytes")
    assert plan.refusal("mid", memory_plan.Needs(1 << 30, 0, 0), ["big"]) is None
    assert memory_plan.Plan(budget=None, used={"big": 2 << 30}, device_free=5 << 30).free == 5 << 30


def test_without_proc_meminfo_free_ram_is_unknown_and_the_machine_s_ram_is_read_without_proc(monkeypatch):
    import psutil

    def hidden():  # as under the unit's ProcSubset=pid
        raise FileNotFoundError(2, "No such file or directory", "/proc/meminfo")

    monkeypatch.setattr(psutil, "virtual_memory", hidden)
    assert memory_plan.free_memory_bytes("cpu") is None
    assert memory_plan.ram_bytes() >= 1 << 30


def test_quantized_weights_and_fp8_kv_are_planned_at_their_packed_sizes(tiny_model_path):
    """int4 at load and an fp8 KV cache: the plan's weights within 10 % of what the engine holds, its KV cache
    what the engine allocates."""
    settings = dict(dtype="float32", max_num_seqs=4, max_num_batched_tokens=256, num_kv_blocks=64)
    config = EngineConfig(**settings, quantization="int4", kv_cache_dtype="fp8")
    need = memory_plan.needs(tiny_model_path, config, kv_context=4096)
    plain = memory_plan.needs(tiny_model_path, EngineConfig(**settings), kv_context=4096)
    engine = Engine(config)
    engine.load_model(tiny_model_path)
    try:
        held = engine.stats().execution["weight_bytes"]
        assert need.weights < plain.weights and abs(need.weights - held) <= 0.1 * held
        assert need.kv_cache == engine.kv_cache_bytes == plain.kv_cache // 4
    finally:
        engine.unload_model()

