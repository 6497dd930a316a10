"""The engine API on a tiny random model: requests, errors, abort, stats, the async wrapper."""

import asyncio

import pytest
from transformers import LlamaConfig

from engine import (
    AsyncEngine,
    DuplicateRequest,
    Engine,
    EngineConfig,
    InvalidParameter,
    NoModelLoaded,
    PromptTooLong,
    QueueFull,
    SamplingParams,
)


@pytest.fixture
def engine(tiny_model_path):
    eng = Engine(EngineConfig(max_waiting_requests=4))
    eng.load_model(tiny_model_path)
    return eng


def drain(eng: Engine) -> dict[str, list]:
    outputs: dict[str, list] = {}
    while eng.has_unfinished():
        for out in eng.step():
            outputs.setdefault(out.request_id, []).append(out)
    return outputs


def test_requests_finish_with_length_and_report_usage(engine):
    engine.add_request("a", "Hello there", SamplingParams(max_tokens=5, temperature=0, ignore_eos=True))
    engine.add_request("b", [1, 2, 3, 4], SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))
    outputs = drain(engine)
    assert [len(outputs["a"]), len(outputs["b"])] == [5, 3]
    last = outputs["a"][-1]
    assert last.finished and last.finish_reason == "length" and last.num_output_tokens == 5
    assert last.num_prompt_tokens == len(engine.tokenizer.encode("Hello there", add_special_tokens=False))
    stats = engine.stats()
    assert stats.generation_tokens_total == 8
    assert stats.kv_blocks_used == 0 and stats.num_running == 0


def test_a_repeated_prompt_reports_its_cached_prefix(engine):
    prompt = list(range(100, 150))
    params = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
    engine.add_request("first", prompt, params)
    assert drain(engine)["first"][-1].num_cached_tokens == 0
    engine.add_request("second", prompt, params)
    assert drain(engine)["second"][-1].num_cached_tokens == 48  # three full blocks of 16
    assert engine.stats().prefix_cache_hits == 48


def test_stop_string_ends_the_request_and_is_not_emitted(engine):
    params = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)
    engine.add_request("probe", "Hello there", params)
    text = "".join(o.new_text for o in drain(engine)["probe"])
    stop = text[3:6]
    assert stop
    engine.add_request("stopped", "Hello there", SamplingParams(max_tokens=30, temperature=0, ignore_eos=True, stop=[stop]))
    outputs = drain(engine)["stopped"]
    assert outputs[-1].finish_reason == "stop" and outputs[-1].stop_reason == stop
    assert "".join(o.new_text for o in outputs) == text[: text.index(stop)]


def test_stop_token_ids_end_the_request(engine):
    engine.add_request("probe", [5, 6, 7], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    tokens = [o.new_token_ids[0] for o in drain(engine)["probe"]]
    stop = tokens[-1]
    engine.add_request("s", [5, 6, 7], SamplingParams(max_tokens=4, temperature=0, stop_token_ids=[stop]))
    outputs = drain(engine)["s"]
    assert len(outputs) == tokens.index(stop) + 1
    assert outputs[-1].finish_reason == "stop" and outputs[-1].stop_reason == stop


def test_abort_frees_blocks_at_once(engine):
    engine.add_request("a", "Hello " * 40, SamplingParams(max_tokens=100, ignore_eos=True))
    engine.step()
    assert engine.stats().kv_blocks_used > 0
    assert engine.abort("a")
    assert engine.stats().kv_blocks_used == 0 and not engine.has_unfinished()
    assert not engine.abort("a")


def test_bad_requests_are_refused_with_the_reason(engine):
    with pytest.raises(InvalidParameter, match="empty"):
        engine.add_request("x", "", SamplingParams())
    with pytest.raises(InvalidParameter) as e:
        engine.add_request("x", [10**9], SamplingParams())
    assert e.value.param == "prompt"
    with pytest.raises(PromptTooLong, match="context is 1024 tokens"):
        engine.add_request("x", [1] * 5000, SamplingParams())
    with pytest.raises(InvalidParameter) as e:
        SamplingParams(temperature=-1)
    assert e.value.param == "temperature"
    engine.add_request("dup", [1], SamplingParams())
    with pytest.raises(DuplicateRequest):
        engine.add_request("dup", [1], SamplingParams())


def test_full_waiting_queue_refuses_new_requests(engine):
    for i in range(4):
        engine.add_request(str(i), [1, 2], SamplingParams(max_tokens=2))
    with pytest.raises(QueueFull):
        engine.add_request("one-too-many", [1, 2], SamplingParams())


def test_no_model_loaded_is_an_error_until_one_is():
    eng = Engine(EngineConfig())
    with pytest.raises(NoModelLoaded, match="load one"):
        eng.add_request("x", [1], SamplingParams())
    assert eng.stats().model is None


def test_dummy_weights_from_a_config_run():
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         architectures=["LlamaForCausalLM"])
    eng = Engine(EngineConfig(dtype="float32"))
    assert eng.stats().execution is None  # nothing runs without a model
    eng.load_model(config)
    execution = eng.stats().execution
    assert execution == {"device": "cpu", "dtype": "float32", "attention_backend": "torch",
                         "fused_layers": False, "cuda_graphs": False, "async_scheduling": False,
                         "experts": "none", "attention": "full", "kv_cache": "1 full group of 2 layers",
                         "kv_cache_dtype": "float32", "weights": "float32", "weights_source": "checkpoint",
                         "weight_bytes": execution["weight_bytes"], "state_slots": "none", "recurrent": "none",
                         "prefix_caching": "on", "images": "none", "max_num_encoder_tokens": None}
    model = eng.session.loaded.model
    assert execution["weight_bytes"] == sum(t.nbytes for t in [*model.parameters(), *model.buffers()])
    eng.add_request("x", [1, 2, 3], SamplingParams(max_tokens=4, ignore_eos=True))
    assert sum(len(o.new_token_ids) for o in drain(eng)["x"]) == 4


def test_embeddings_are_mean_pooled_vectors(engine):
    vectors = engine.embed([[1, 2, 3], [1, 2, 3], [9, 8]])
    assert len(vectors) == 3 and len(vectors[0]) == 64
    assert vectors[0] == vectors[1] and vectors[0] != vectors[2]


async def test_async_engine_streams_and_cancel_frees_blocks(engine):
    async_engine = AsyncEngine(engine)
    async_engine.start()
    try:
        params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
        outputs = [o async for o in async_engine.generate("Hello there", params)]
        assert len(outputs) == 6 and outputs[-1].finished

        stream = async_engine.generate("Hello " * 30, SamplingParams(max_tokens=500, ignore_eos=True))
        await stream.__anext__()
        assert async_engine.stats().kv_blocks_used > 0
        await stream.aclose()  # what a client disconnect does
        for _ in range(100):
            if async_engine.stats().kv_blocks_used == 0:
                break
            await asyncio.sleep(0.02)
        assert async_engine.stats().kv_blocks_used == 0 and not engine.has_unfinished()

        with pytest.raises(InvalidParameter):
            async for _ in async_engine.generate("", params):
                pass
    finally:
        async_engine.shutdown()


def test_submitted_calls_run_on_the_engine_thread_and_a_cancelled_one_never_runs(tiny_model_path):
    """Loading and stepping share one thread: each thread running torch on CPU costs an OpenMP team."""
    import threading

    async_engine = AsyncEngine(Engine(EngineConfig()))
    async_engine.start()
    try:
        ran_on = async_engine.submit(lambda e: (e.load_model(tiny_model_path), threading.get_ident())[1]).result()
        assert ran_on == async_engine._thread.ident != threading.get_ident()
        assert async_engine.engine.model_name is not None

        gate, ran = threading.Event(), []
        blocker = async_engine.submit(lambda e: gate.wait(5))
        cancelled = async_engine.submit(lambda e: ran.append(1))
        assert cancelled.cancel()
        gate.set()
        assert blocker.result() is True
        async_engine.submit(lambda e: None).result()  # everything queued before it has run
        assert ran == []
    finally:
        async_engine.shutdown()


def test_mixed_context_lengths_match_generate_alone(tiny_model_path):
    """Decodes of very different lengths run in separate padded groups; tokens must not change."""
    import torch

    engine = Engine(EngineConfig(block_size=8))
    engine.load_model(tiny_model_path)
    prompts = [list(range(200, 200 + n)) for n in (3, 21, 70, 150, 301)]
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    got = {k: [t for o in v for t in o.new_token_ids] for k, v in drain(engine).items()}
    model = engine.session.loaded.model
    model.set_attn_implementation("sdpa")
    model.generation_config.eos_token_id = None
    for i, prompt in enumerate(prompts):
        ids = torch.tensor([prompt])
        want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
        assert got[str(i)] == want[0, len(prompt):].tolist(), f"prompt of {len(prompt)} tokens"
