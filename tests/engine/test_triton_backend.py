"""The engine on the triton attention backend gives generate()'s greedy tokens, as the torch path does.

Float32, a group of three query heads per kv head, chunked prefill, prefix caching and preemption
all go through the one kernel, with the layers fused (engine.fused_layers) and without. Without a GPU the kernel runs in Triton's interpreter (see
tests/conftest.py); on a GPU the same tests run it compiled, with CUDA graphs for the decode steps,
and one more compares the CUDA path with the torch path in bfloat16.
"""

import pytest
import torch
from transformers import LlamaConfig, Qwen2Config

from engine import Engine, EngineConfig, SamplingParams
from tests.engine.architectures import build

SHAPE = dict(
    vocab_size=512, hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=6,
    num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
)
CONFIG = LlamaConfig(**SHAPE, architectures=["LlamaForCausalLM"])
PREFIX = list(range(100, 132))
PROMPTS = [[7, 8, 9], list(range(200, 217)), list(range(300, 340)), list(range(50, 115)),
           PREFIX + [1, 2, 3], PREFIX + [4, 5, 6, 7, 8]]
OUTPUT_LEN = 8


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_engine(config=CONFIG, **settings) -> Engine:
    settings.setdefault("dtype", "float32")  # "auto" would be bfloat16 on a GPU; the comparisons are float32's
    engine = Engine(EngineConfig(block_size=8, max_num_batched_tokens=48, device=DEVICE, **settings))
    engine.load_model(config)
    # Sharper logits than the default init, so greedy decoding has clear winners.
    embedding = engine.session.loaded.model.model.embed_tokens.weight
    with torch.no_grad():
        embedding.copy_(torch.randn(embedding.shape, generator=torch.Generator().manual_seed(0)))
    return engine


def run(engine: Engine, logprobs: int | None = None, prompts=PROMPTS) -> list[list]:
    """Each request's greedy tokens (or, with logprobs, its SampledTokens)."""
    for i, prompt in enumerate(prompts):
        params = SamplingParams(max_tokens=OUTPUT_LEN, temperature=0, ignore_eos=True, logprobs=logprobs)
        engine.add_request(str(i), prompt, params)
    outputs = {str(i): [] for i in range(len(prompts))}
    while engine.has_unfinished():
        for out in engine.step():
            outputs[out.request_id] += out.logprobs if logprobs else out.new_token_ids
    return [outputs[str(i)] for i in range(len(prompts))]


def generate_greedy(config, prompts=PROMPTS) -> list[list[int]]:
    model = make_engine(config, attention_backend="torch").session.loaded.model
    model.set_attn_implementation("sdpa")
    model.generation_config.eos_token_id = None
    outputs = []
    for prompt in prompts:
        ids = torch.tensor([prompt], device=DEVICE)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=OUTPUT_LEN, do_sample=False)
        outputs.append(out[0, len(prompt):].tolist())
    assert len({t for o in outputs for t in o}) > len(prompts), "the reference should not be one repeated token"
    return outputs


@pytest.fixture(scope="module")
def expected() -> list[list[int]]:
    return generate_greedy(CONFIG)


def test_triton_backend_matches_generate(expected):
    engine = make_engine(attention_backend="triton")
    execution = engine.stats().execution
    assert {k: execution[k] for k in ("device", "dtype", "attention_backend", "fused_layers", "cuda_graphs",
                                      "async_scheduling", "kv_cache_dtype", "weights", "experts", "attention",
                                      "kv_cache")} == {
        "device": DEVICE, "dtype": "float32", "attention_backend": "triton", "fused_layers": True,
        "cuda_graphs": DEVICE == "cuda", "async_scheduling": DEVICE == "cuda", "kv_cache_dtype": "float32",
        "weights": "float32", "experts": "none", "attention": "full", "kv_cache": "1 full group of 2 layers"}
    assert run(engine) == expected
    assert engine.stats().prefix_cache_hits > 0


def test_fused_layers_with_projection_biases_match_generate():
    config = Qwen2Config(**SHAPE, architectures=["Qwen2ForCausalLM"])
    engine = make_engine(config, attention_backend="triton")
    assert engine.session.runner.fused
    prompts = PROMPTS[:2]  # 3 and 17 tokens: the biases are what is new here
    assert run(engine, prompts=prompts) == generate_greedy(config, prompts)


def test_fused_model_handed_to_the_torch_backend_still_matches_generate(expected):
    """What the runner does when the triton backend, picked automatically, fails its CUDA warm-up."""
    engine = make_engine(attention_backend="triton")
    engine.session.runner._use_backend("torch")
    execution = engine.stats().execution
    assert (execution["attention_backend"], execution["fused_layers"]) == ("torch", True)  # what the operator sees
    assert run(engine) == expected


def test_embeddings_of_a_fused_model_equal_the_torch_backends():
    """Embeddings bypass the paged cache (SDPA over the prompt): the fused modules' other path."""
    fused, plain = make_engine(attention_backend="triton"), make_engine(attention_backend="torch")
    assert fused.session.runner.fused and not plain.session.runner.fused
    prompts = [[5, 6, 7, 8, 9], list(range(40, 60))]
    for got, want in zip(fused.embed(prompts), plain.embed(prompts)):
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("async_scheduling", ["off", "on"])
def test_triton_backend_with_transformers_layers_matches_generate_under_preemption(expected, async_scheduling):
    engine = make_engine(attention_backend="triton", num_kv_blocks=14, fused_layers=False, async_scheduling=async_scheduling)
    assert not engine.session.runner.fused
    assert run(engine) == expected
    assert engine.stats().num_preemptions > 0


def test_warm_up_runs_a_full_step_on_a_scratch_cache_and_leaves_the_real_one_alone():
    engine = make_engine(attention_backend="triton", num_kv_blocks=16)
    runner = engine.session.runner
    caches = runner.kv_caches
    before = [(k.clone(), v.clone()) for k, v in caches]
    scratch_bytes = runner.warm_up()
    assert runner.kv_caches is caches
    assert all(torch.equal(k, k0) and torch.equal(v, v0) for (k, v), (k0, v0) in zip(caches, before))
    per_token = 2 * CONFIG.num_hidden_layers * CONFIG.num_key_value_heads * 16 * 4
    assert scratch_bytes >= engine.config.max_num_batched_tokens * per_token


def test_a_hybrid_model_on_the_triton_backend_with_async_scheduling_matches_the_torch_backend(tmp_path):
    """Recurrent layers' state slots through the triton packing (sequences in schedule order: one-token rows
    between prefill chunks) and overlapped steps, against the torch path's tokens (Qwen3-Next); then prefix-cache
    hits, whose states, kept at a prompt's last whole block, are restored into another sequence's slot (the copies
    queued after one overlapped step run before the next)."""
    build("qwen3_next").save_pretrained(tmp_path)

    def tokens(**settings) -> tuple[list[list[int]], int]:
        engine = Engine(EngineConfig(block_size=8, max_num_batched_tokens=48, device=DEVICE, dtype="float32",
                                     num_kv_blocks=64, **settings))
        engine.load_model(tmp_path)
        assert engine.stats().execution["state_slots"].endswith("layers)")
        # 3, 17 and 40 tokens: decodes beside a prompt cut in chunks; 35 tokens: its states are kept after 32
        first = run(engine, prompts=PROMPTS[:3] + [PROMPTS[4]])
        engine.add_request("hit", PROMPTS[5], SamplingParams(max_tokens=2, temperature=0, ignore_eos=True))
        hit = [(out.new_token_ids, out.num_cached_tokens) for _ in range(4) for out in engine.step()]
        return first, hit

    on_torch = tokens(attention_backend="torch")
    assert [cached for _, cached in on_torch[1]] == [32, 32]  # the prefix's 4 blocks, and the states after them
    assert tokens(attention_backend="triton", async_scheduling="on") == on_torch


def test_triton_backend_needs_cuda_outside_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        EngineConfig(attention_backend="triton")


@pytest.mark.skipif(DEVICE != "cuda", reason="the CUDA path (compiled kernel, CUDA graphs, bfloat16) needs a GPU")
def test_cuda_path_in_bfloat16_stays_within_bf16_tolerance_of_the_torch_path():
    """bfloat16 tolerance, as vLLM's logprob checks: each request's greedy tokens agree until a first
    difference, and there each path's token is among the other's 5 most likely (near-ties may flip
    on rounding); nothing after it is compared, since the contexts then differ."""
    fast = make_engine(attention_backend="triton", dtype="bfloat16")
    assert fast.session.runner.graphs is not None
    reference = run(make_engine(attention_backend="torch", dtype="bfloat16", cuda_graphs=False), logprobs=5)
    agreed = 0
    for ours, theirs in zip(run(fast, logprobs=5), reference):
        for a, b in zip(ours, theirs):
            if a.token_id != b.token_id:
                assert a.token_id in [t for t, _ in b.top_logprobs] and b.token_id in [t for t, _ in a.top_logprobs]
                break
            agreed += 1
    assert agreed >= 0.8 * len(PROMPTS) * OUTPUT_LEN
