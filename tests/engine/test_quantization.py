"""Quantized weights and KV cache (engine.quantization): pre-quantized checkpoints against their dequantized
twins, quantizing at load within quality bounds, GGUF kept packed, fp8 KV blocks."""

import math

import pytest
import torch
from torch import nn

from engine import Engine, EngineConfig, SamplingParams
from engine.errors import ModelLoadError
from engine.loader import load_model
from engine.quantization.packed_linear import PackedLinear, packed_linears
from tests.engine.architectures import build
from tests.engine.quantized_checkpoints import WRITERS, linears

PROMPTS = [[5, 17, 99, 230, 41], [300, 12, 7, 7, 120, 64, 9, 33], [450, 2 + 1, 88]]
NEW_TOKENS = 12
# A fixed English text for perplexity (public domain: the opening of the US Declaration of Independence).
TEXT = ("When in the Course of human events, it becomes necessary for one people to dissolve the political bands "
        "which have connected them with another, and to assume among the powers of the earth, the separate and "
        "equal station to which the Laws of Nature and of Nature's God entitle them, a decent respect to the "
        "opinions of mankind requires that they should declare the causes which impel them to the separation. "
        "We hold these truths to be self-evident, that all men are created equal, that they are endowed by their "
        "Creator with certain unalienable Rights, that among these are Life, Liberty and the pursuit of Happiness.")


def engine_greedy(engine: Engine, prompts: list[list[int]], n: int) -> list[list[int]]:
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True))
    tokens = {str(i): [] for i in range(len(prompts))}
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id] += out.new_token_ids
    return [tokens[str(i)] for i in range(len(prompts))]


def generate_greedy(model: nn.Module, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(prompt):].tolist()


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Greedy agreement: the share of tokens generated before each pair of sequences first differs."""
    agreed = 0
    for x, y in zip(a, b):
        agreed += next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), len(x))
    return agreed / sum(len(x) for x in a)


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_pre_quantized_checkpoint_loads_packed_and_agrees_with_its_dequantized_twin(fmt, tmp_path):
    twin = WRITERS[fmt](build("mistral"), tmp_path)
    twin.generation_config.eos_token_id = None
    engine = Engine(EngineConfig(dtype="float32", block_size=4, num_kv_blocks=128))
    loaded = engine.load_model(tmp_path)
    packed = packed_linears(loaded.model)
    assert len(packed) == len(linears(twin)), "every quantized linear stays packed"
    assert not any(type(m) is nn.Linear for m in loaded.model.model.layers.modules())
    # The stored values mean the same weights as the format's formula says (bfloat16 scales aside).
    for (name, linear), layer in zip(linears(twin).items(), packed):
        assert torch.allclose(layer.dequantized(torch.float32), linear.weight, rtol=1e-2, atol=2e-3), name
    assert agreement(engine_greedy(engine, PROMPTS, NEW_TOKENS),
                     [generate_greedy(twin, p, NEW_TOKENS) for p in PROMPTS]) >= 0.9
    assert engine.stats().execution["weights_source"] != "checkpoint"


def test_a_quantized_checkpoint_with_quantization_set_is_refused_by_name(tmp_path):
    WRITERS["gptq"](build("mistral"), tmp_path)
    with pytest.raises(ModelLoadError, match="quantized already .*GPTQ.*unset quantization"):
        load_model(tmp_path, quantization="int8")


def test_fp8_at_load_is_refused_with_the_reason_on_cpu():
    with pytest.raises(ModelLoadError, match="compute capability 8.9"):
        load_model(build("mistral").config, quantization="fp8")


def text_figures(model: nn.Module, ids: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Perplexity on the text, and the greedy (argmax) next token at each of its positions."""
    with torch.inference_mode():
        logits = model(ids).logits[0, :-1].float()
    return math.exp(torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item()), logits.argmax(-1)


@pytest.mark.slow
def test_quantize_at_load_shrinks_the_default_model_within_quality_bounds(default_model_path):
    reference = load_model(default_model_path, torch.float32)
    ids = reference.tokenizer(TEXT, return_tensors="pt").input_ids
    base_ppl, base_next = text_figures(reference.model, ids)
    # (scheme, perplexity at most this times float32's, bytes at most this share, next-token agreement at least).
    # The linear layers are ~70 % of SmolLM2-135M's float32 bytes; its tied embeddings stay float32. Its weights come
    # from a Q4_1 GGUF (4-bit levels in groups of 32): int4 in groups of 32 lands on those levels almost exactly
    # (agreement 0.98), while int8 per output channel spreads 256 levels over a whole row's groups (0.943: 7 of 122
    # next tokens differ, each where float32's top two logits are within 0.6 of each other, the median gap being
    # 1.76; perplexity 0.7 % lower).
    bounds = [("int8", 1.01, 0.45, 0.93),  # the bound: int8 weight-only within 1 % of float32
              ("int4", 1.02, 0.35, 0.9)]
    for scheme, max_ppl_ratio, max_bytes_ratio, min_agreement in bounds:
        quantized = load_model(default_model_path, torch.float32, quantization=scheme)
        ppl, next_tokens = text_figures(quantized.model, ids)
        assert ppl <= base_ppl * max_ppl_ratio, f"{scheme}: perplexity {ppl:.3f} against float32's {base_ppl:.3f}"
        assert (next_tokens == base_next).float().mean() >= min_agreement, scheme
        assert quantized.weights.bytes <= reference.weights.bytes * max_bytes_ratio, scheme
        assert quantized.weights.packing.startswith(scheme)


def test_fp8_kv_cache_holds_twice_the_blocks_of_bfloat16_in_the_same_bytes(tmp_path):
    model = build("mistral")
    model.save_pretrained(tmp_path)
    budget = 1 << 20
    blocks = {}
    for kv in ("auto", "fp8"):
        engine = Engine(EngineConfig(dtype="bfloat16", block_size=4, kv_cache_bytes=budget, kv_cache_dtype=kv))
        engine.load_model(tmp_path)
        blocks[kv] = engine.stats().kv_blocks_total
        runner = engine.session.runner
        assert runner.kv_cache_bytes <= budget
        assert runner.layout.block_bytes(4, runner.kv_dtype.itemsize) * (blocks[kv] + 1) == \
            runner.kv_cache_bytes
    assert blocks["fp8"] + 1 == 2 * (blocks["auto"] + 1)
    assert engine.stats().execution["kv_cache_dtype"] == "float8_e4m3fn"


def test_fp8_kv_cache_keeps_greedy_output_of_the_float_cache(tmp_path):
    model = build("mistral")  # sliding windows of 8: prefill chunks and decodes read the fp8 cache back
    model.save_pretrained(tmp_path)
    outputs = {}
    for kv in ("auto", "fp8"):
        engine = Engine(EngineConfig(dtype="float32", block_size=4, num_kv_blocks=256, max_num_batched_tokens=16,
                                     kv_cache_dtype=kv))
        engine.load_model(tmp_path)
        outputs[kv] = engine_greedy(engine, [p * 4 for p in PROMPTS], 16)
    assert agreement(outputs["fp8"], outputs["auto"]) >= 0.9


def test_packed_layers_keep_their_weights_packed_in_memory():
    weight = torch.randn(256, 128)
    for scheme, most in (("int8", 0.27), ("int4", 0.16)):
        from engine.quantization.at_load import pack_linear

        layer: PackedLinear = pack_linear(weight, None, scheme)
        assert layer.weight_bytes() <= weight.nbytes * most
        x = torch.randn(3, 128)
        reference = x @ layer.dequantized(torch.float32).T
        assert torch.allclose(layer(x), reference, rtol=2e-2, atol=5e-2 * reference.abs().max().item())


def test_tied_embeddings_packed_as_int8_share_their_bytes_with_the_lm_head():
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.quantization.packed_embedding import Int8Embedding, pack_embeddings
    from engine.quantization.weights import model_bytes

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)).eval()
    ids = torch.tensor([[5, 17, 99, 230, 41, 300]])
    table = model.get_input_embeddings().weight
    float_bytes = model_bytes(model)
    assert pack_embeddings(model)
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert isinstance(embed, Int8Embedding) and head.q is embed.q and head.scale is embed.scale
    # One int8 table (and a bfloat16 scale a row) in place of the float32 one, counted once.
    assert model_bytes(model) == float_bytes - table.nbytes + table.numel() + 2 * table.shape[0]
    assert torch.allclose(embed.dequantized(torch.float32), table, atol=table.abs().max().item() / 127)
    with torch.inference_mode():
        logits = model(ids).logits
        model.set_input_embeddings(nn.Embedding.from_pretrained(embed.dequantized(torch.float32)))
        model.set_output_embeddings(nn.Linear(64, 512, bias=False))
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
        reference = model(ids).logits
    assert torch.allclose(logits, reference, atol=0.02 * reference.abs().max().item())
