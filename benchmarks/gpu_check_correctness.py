"""The CUDA path against the portable path on the same random weights: greedy tokens and log-probabilities.

Requests of mixed lengths run together: short prompts, prompts prefilled in chunks, two sharing a
prefix (a prefix-cache hit), and one past the sliding window where the model has one. Each path runs
them once with logprobs (steps one by one: the chosen token's log-probability at every prompt and
output position, and the top 5 at each output) and the CUDA path once more without (async
scheduling, CUDA graphs). Greedy tokens agree until a first difference, if any; there each path's
token must be among the other's 5 most likely (a near tie that rounding may flip, vLLM's rule); the
contexts differ after it, so nothing later is compared. The log-probabilities' relative error
‖ours − portable‖ / ‖portable‖ is taken over every position both share.
"""

import math
import random

import torch

from benchmarks.gpu_check_plan import Plan
from benchmarks.model_shapes import SHAPES, sliding_window_of
from engine import Engine, EngineConfig, SamplingParams

TOP = 5
# Relative error allowed: float32 runs exact dots on both paths; bfloat16 rounds each to 8 bits.
LOGPROB_REL_ERR_LIMIT = {"float32": 1e-4, "bfloat16": 2e-2}


def correctness_prompts(plan: Plan, vocab: int, window: int | None, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)

    def tokens(n: int) -> list[int]:  # ids from 1000 up: past the special and control tokens
        return [rng.randrange(1000, vocab) for _ in range(n)]

    prompts = [tokens(n) for n in plan.correctness_prompt_lens]
    prefix = tokens(plan.correctness_shared_prefix)
    prompts += [prefix + tokens(3), prefix + tokens(5)]
    if window:
        prompts.append(tokens(window + 2 * plan.correctness_output_len + 7))  # its decodes slide past the window
    return prompts


def add_prompt(engine: Engine, request_id: str, prompt, images: list, params: SamplingParams) -> None:
    """A request of a prompt (token ids or text) and its images: expanded by the model's processor where it has
    any."""
    if images:
        prompt, prompt_images = engine.prepare_images(prompt, images)
        engine.add_request(request_id, prompt, params, images=prompt_images)
    else:
        engine.add_request(request_id, prompt, params)


def run_paths(engine: Engine, prompts: list, output_len: int, logprobs: bool) -> list[dict]:
    """Each request's output tokens and, with logprobs, its SampledTokens and prompt logprobs. A prompt is token
    ids, or (text, images) for a model that takes images (benchmarks/gpu_check_images)."""
    params = SamplingParams(max_tokens=output_len, temperature=0, ignore_eos=True,
                            logprobs=TOP if logprobs else None, prompt_logprobs=0 if logprobs else None)
    for i, prompt in enumerate(prompts):
        prompt, images = prompt if isinstance(prompt, tuple) else (prompt, [])
        add_prompt(engine, str(i), prompt, images, params)
    runs = [{"tokens": [], "sampled": [], "prompt": []} for _ in prompts]
    while engine.has_unfinished():
        for out in engine.step():
            run = runs[int(out.request_id)]
            run["tokens"] += out.new_token_ids
            run["sampled"] += out.logprobs
            run["prompt"] += [t.logprob for t in out.prompt_logprobs or []][1:]  # the first token has none
    return runs


def first_difference(ours: list[int], reference: list[dict], ours_top: list[list[int]] | None) -> tuple[int, bool]:
    """(positions agreed before the first difference, whether that difference is a near tie)."""
    for i, (a, b) in enumerate(zip(ours, reference)):
        if a != b.token_id:
            in_reference_top = a in [t for t, _ in b.top_logprobs]
            in_ours_top = ours_top is None or b.token_id in ours_top[i]
            return i, in_reference_top and in_ours_top
    return len(ours), True


def compare(fast: list[dict], fast_async: list[dict], portable: list[dict]) -> dict:
    agreed = agreed_async = total = 0
    near_ties = True
    ours_values, reference_values = [], []
    for f, a, p in zip(fast, fast_async, portable):
        top = [[t for t, _ in s.top_logprobs] for s in f["sampled"]]
        n, near = first_difference(f["tokens"], p["sampled"], top)
        n_async, near_async = first_difference(a["tokens"], p["sampled"], None)
        agreed, agreed_async, total = agreed + n, agreed_async + n_async, total + len(p["tokens"])
        near_ties = near_ties and near and near_async
        ours_values += f["prompt"] + [s.logprob for s in f["sampled"][:n]]
        reference_values += p["prompt"] + [s.logprob for s in p["sampled"][:n]]
    ours_t, reference_t = torch.tensor(ours_values, dtype=torch.float64), torch.tensor(reference_values, dtype=torch.float64)
    rel_err = ((ours_t - reference_t).norm() / reference_t.norm()).item()
    return {"tokens": total, "agreed": agreed / total, "agreed_async": agreed_async / total,
            "divergences_are_near_ties": near_ties, "logprob_positions": len(ours_values),
            "logprob_rel_err": rel_err if math.isfinite(rel_err) else float("inf")}


def sharpen(engine: Engine, seed: int = 0) -> None:
    """Input embeddings of unit scale (the default init's 0.02 gives near-flat logits, where greedy
    tokens are near ties everywhere). The same on both paths: the weights are load_dummy's seed's."""
    embedding = engine.session.loaded.model.get_input_embeddings().weight
    with torch.no_grad():
        embedding.copy_(torch.randn(embedding.shape, generator=torch.Generator().manual_seed(seed)))


def run_engine_paths(config, engine_config: EngineConfig, prompts, output_len: int, with_async: bool):
    """config: a model config (random weights) or a checkpoint's folder."""
    engine = Engine(engine_config)
    engine.load_model(config)
    sharpen(engine)
    execution = engine.stats().execution
    runs = run_paths(engine, prompts, output_len, logprobs=True)
    runs_async = run_paths(engine, prompts, output_len, logprobs=False) if with_async else None
    engine.unload_model()
    return execution, runs, runs_async


def check_shape(name: str, plan: Plan, entry: dict) -> None:
    """Fills entry[dtype] for each of the plan's dtypes: the comparison, the CUDA path's execution, a verdict."""
    shape = SHAPES[name]
    config = shape.config(tiny=plan.tiny, layers=shape.correctness_layers)
    window = sliding_window_of(config)
    prompts = correctness_prompts(plan, config.vocab_size, window)
    entry.update(layers=config.num_hidden_layers, requests=len(prompts), sliding_window=window,
                 longest_prompt=max(map(len, prompts)))
    for dtype in plan.correctness_dtypes:
        n = plan.correctness_output_len
        execution, fast, fast_async = run_engine_paths(config, plan.fast_path(dtype), prompts, n, with_async=True)
        _, portable, _ = run_engine_paths(config, plan.portable_path(dtype), prompts, n, with_async=False)
        result = compare(fast, fast_async, portable)
        # A hybrid model's decode steps are not captured as graphs (engine.model_runner); its fast path is fla's kernels.
        fast_path_ran = execution["attention_backend"] == "triton" and (
            execution["cuda_graphs"] or plan.device != "cuda" or execution["recurrent"] == "fla")
        result.update(execution=execution, fast_path_ran=fast_path_ran,
                      passed=fast_path_ran and result["divergences_are_near_ties"]
                      and result["logprob_rel_err"] <= LOGPROB_REL_ERR_LIMIT[dtype])
        entry[dtype] = result
