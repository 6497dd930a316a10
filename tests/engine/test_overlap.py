"""Async scheduling (engine.overlap), run on CPU with async_scheduling="on": every request's tokens,
text and finish are those of steps run one by one, whatever ends it (EOS, a stop string, a stop
token, max_tokens, an abort, preemption), and requests that need steps one by one switch it off."""

import pytest

from engine import Engine, EngineConfig, SamplingParams


def run(model_path, requests, async_scheduling: str, abort_after: dict[str, int] | None = None, join=None, **config):
    """Runs the requests to the end: per request (token ids, text, finish reason, stop reason, output count).

    abort_after: request id -> abort it once it has that many outputs; join: (step, id, prompt, params) added then."""
    engine = Engine(EngineConfig(async_scheduling=async_scheduling, **config))
    engine.load_model(model_path)
    for request_id, prompt, params in requests:
        engine.add_request(request_id, prompt, params)
    results: dict[str, list] = {}
    overlapped_steps = step = 0
    while engine.has_unfinished() or (join and step <= join[0]):
        if join and step == join[0]:
            engine.add_request(*join[1:])
        for out in engine.step():
            tokens, text, _, _, _ = results.setdefault(out.request_id, [[], "", None, None, 0])
            results[out.request_id] = [tokens + out.new_token_ids, text + out.new_text, out.finish_reason,
                                       out.stop_reason, out.num_output_tokens]
            if abort_after and abort_after.get(out.request_id) == out.num_output_tokens:
                engine.abort(out.request_id)
                results[out.request_id][2] = "abort"
        overlapped_steps += engine.in_flight is not None
        step += 1
    stats = engine.stats()
    assert stats.kv_blocks_used == 0 and stats.num_running == 0 and not engine.sequences
    return results, overlapped_steps, stats


def greedy(n, **options):
    return SamplingParams(max_tokens=n, temperature=0, **options)


@pytest.fixture(scope="module")
def probe(tiny_model_path_b):
    """Text the untied tiny model writes, to cut stop strings and stop tokens from."""
    results, _, _ = run(tiny_model_path_b, [("p", "Hello there", greedy(24, ignore_eos=True))], "off")
    return results["p"]


def mixed_requests(probe):
    tokens, text = probe[0], probe[1]
    return [
        ("long", "Hello there", greedy(24, ignore_eos=True)),
        ("short", "Hello there", greedy(3, ignore_eos=True)),
        ("stop-string", "Hello there", greedy(24, ignore_eos=True, stop=[text[8:11]])),
        ("stop-token", "Hello there", greedy(24, ignore_eos=True, stop_token_ids=[tokens[5]])),
        ("eos", [5, 6, 7], greedy(20)),
        ("seeded", "Once upon a time", SamplingParams(max_tokens=12, temperature=0.9, top_p=0.9, seed=7)),
        ("long-prompt", list(range(100, 190)), greedy(9, ignore_eos=True)),
    ]


def test_overlapped_steps_give_the_tokens_of_steps_one_by_one(tiny_model_path_b, probe):
    requests = mixed_requests(probe)
    expected, overlapped, _ = run(tiny_model_path_b, requests, "off")
    got, overlapped_on, _ = run(tiny_model_path_b, requests, "on")
    assert got == expected
    assert overlapped == 0 and overlapped_on > 5  # the steps really ran ahead of their tokens
    assert expected["stop-string"][2:4] == ["stop", probe[1][8:11]]
    assert expected["stop-token"][2:4] == ["stop", probe[0][5]]


def test_preemption_and_the_prefix_cache_under_overlapped_steps(tiny_model_path_b, probe):
    requests = mixed_requests(probe) + [(f"again-{i}", list(range(100, 190)), greedy(5 + i, ignore_eos=True))
                                        for i in range(3)]
    config = dict(num_kv_blocks=14, block_size=16, max_num_batched_tokens=64)
    expected, _, stats_off = run(tiny_model_path_b, requests, "off", **config)
    got, _, stats_on = run(tiny_model_path_b, requests, "on", **config)
    assert got == expected
    assert stats_on.num_preemptions > 0 and stats_on.prefix_cache_hits > 0


def test_an_abort_while_a_step_is_in_flight_drops_its_token(tiny_model_path_b, probe):
    requests = mixed_requests(probe)
    expected, _, _ = run(tiny_model_path_b, requests, "off", abort_after={"long": 4})
    got, _, _ = run(tiny_model_path_b, requests, "on", abort_after={"long": 4})
    assert got == expected and len(got["long"][0]) == 4


def test_a_request_that_needs_each_token_first_turns_overlap_off_until_it_ends(tiny_model_path_b, probe):
    joining = (4, "logprobs", "Hello there", greedy(6, ignore_eos=True, logprobs=2))
    expected, _, _ = run(tiny_model_path_b, mixed_requests(probe), "off", join=joining)
    got, overlapped, _ = run(tiny_model_path_b, mixed_requests(probe), "on", join=joining)
    assert got == expected and overlapped > 0

    engine = Engine(EngineConfig(async_scheduling="on"))
    engine.load_model(tiny_model_path_b)
    engine.add_request("a", "Hello there", greedy(20, ignore_eos=True))
    assert engine.step() == [] and engine.in_flight is not None  # launched; its token is on its way
    engine.step()
    engine.add_request("b", "Hello there", greedy(8, ignore_eos=True, logprobs=1))
    outputs = engine.step()  # the in-flight token is read, then a step one by one
    assert engine.in_flight is None and [o.request_id for o in outputs] == ["a", "a", "b"]
    assert outputs[-1].logprobs[0].top_logprobs
    while "b" in engine.sequences:
        engine.step()
        assert engine.in_flight is None
    engine.step()
    assert engine.in_flight is not None  # "b" is done: overlapped again


def test_async_scheduling_is_on_by_default_only_on_cuda():
    assert EngineConfig(device="cuda").overlaps_steps and not EngineConfig().overlaps_steps
    assert EngineConfig(async_scheduling="on").overlaps_steps
    assert not EngineConfig(device="cuda", async_scheduling="off").overlaps_steps
    with pytest.raises(ValueError, match="async_scheduling must be one of auto, on, off"):
        EngineConfig(async_scheduling="yes")
