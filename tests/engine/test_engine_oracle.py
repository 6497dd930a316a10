"""The correctness oracle: batched engine output equals transformers generate() per prompt.

Greedy, float32, CPU, the real SmolLM2-135M. Each of the concurrent requests has its own prompt
and output length; the tokens must be exactly what generate() gives that prompt alone — plain,
with a shared system prompt served from the prefix cache, and with a KV pool so small that the
scheduler has to preempt and recompute.
"""

import pytest
import torch

from engine import Engine, EngineConfig, SamplingParams

pytestmark = pytest.mark.slow

SYSTEM = "You are a helpful assistant. Answer briefly and precisely. Use plain words. " * 2
QUESTIONS = [
    "What is the capital of France?",
    "Name three colors.",
    "Write a haiku about the sea.",
    "What is 2+2?",
    "Who wrote Hamlet?",
    "Explain gravity in one sentence.",
    "List the planets of the solar system.",
    "Why is the sky blue?",
]
OUTPUT_LENS = [6 + 4 * i for i in range(len(QUESTIONS))]


@pytest.fixture(scope="module")
def engine(default_model_path):
    eng = Engine(EngineConfig(dtype="float32"))
    eng.load_model(default_model_path)
    return eng


@pytest.fixture(scope="module")
def prompts(engine):
    tok = engine.tokenizer
    return [
        tok.apply_chat_template(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
            add_generation_prompt=True,
        )["input_ids"]
        for q in QUESTIONS
    ]


@pytest.fixture(scope="module")
def expected(engine, prompts):
    """generate() for each prompt alone, never stopping early (as ignore_eos does)."""
    model = engine.session.loaded.model
    model.set_attn_implementation("sdpa")
    config = model.generation_config
    eos, config.eos_token_id = config.eos_token_id, None
    try:
        outputs = []
        for prompt, n in zip(prompts, OUTPUT_LENS):
            ids = torch.tensor([prompt])
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)
            outputs.append(out[0, len(prompt) :].tolist())
    finally:
        config.eos_token_id = eos
        engine.session.runner.model.set_attn_implementation("appliance_paged")
    return outputs


def run_batch(model_path, prompts, config: EngineConfig):
    eng = Engine(config)
    eng.load_model(model_path)
    for i, (prompt, n) in enumerate(zip(prompts, OUTPUT_LENS)):
        eng.add_request(str(i), prompt, SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True))
    tokens = {str(i): [] for i in range(len(prompts))}
    while eng.has_unfinished():
        for out in eng.step():
            tokens[out.request_id] += out.new_token_ids
    return eng.stats(), [tokens[str(i)] for i in range(len(prompts))]


def test_batched_requests_match_generate_alone(default_model_path, prompts, expected):
    config = EngineConfig(dtype="float32", enable_prefix_caching=False, max_num_batched_tokens=96)
    stats, outputs = run_batch(default_model_path, prompts, config)
    assert stats.prefix_cache_hits == 0 and stats.num_preemptions == 0
    assert outputs == expected


def test_prefix_cache_hits_do_not_change_tokens(default_model_path, prompts, expected):
    # A small budget admits requests over several steps, so later ones find the system prompt cached.
    config = EngineConfig(dtype="float32", enable_prefix_caching=True, max_num_batched_tokens=64, block_size=16)
    stats, outputs = run_batch(default_model_path, prompts, config)
    assert stats.prefix_cache_hits >= 16 * (len(prompts) - 2)
    assert outputs == expected


def test_preemption_by_recompute_does_not_change_tokens(default_model_path, prompts, expected):
    longest = max(len(p) for p in prompts) + max(OUTPUT_LENS)
    config = EngineConfig(dtype="float32", num_kv_blocks=-(-longest // 16) + 2, block_size=16, max_num_batched_tokens=128)
    stats, outputs = run_batch(default_model_path, prompts, config)
    assert stats.num_preemptions > 0
    assert outputs == expected


def test_overlapped_steps_with_preemption_do_not_change_tokens(default_model_path, prompts, expected):
    """Async scheduling (forced on CPU): steps launched before the previous tokens are read."""
    longest = max(len(p) for p in prompts) + max(OUTPUT_LENS)
    config = EngineConfig(dtype="float32", num_kv_blocks=-(-longest // 16) + 2, block_size=16, max_num_batched_tokens=128,
                          async_scheduling="on")
    stats, outputs = run_batch(default_model_path, prompts, config)
    assert stats.num_preemptions > 0
    assert outputs == expected
