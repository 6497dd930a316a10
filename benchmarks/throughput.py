"""Offline throughput: our engine vs transformers generate() and transformers' continuous batching.

One process, one run, one seeded mixed workload (prompt lengths uniform in 32-512 tokens, output
lengths uniform in 16-256, EOS ignored) on the same model and dtype:
  (a) our engine, all requests submitted at once;
  (b) transformers generate() in static left-padded batches of 16 (each batch runs to its longest output);
  (c) transformers' own continuous batching (the generate_batch manager, per-request max_new_tokens).
Throughput counts only the requested output tokens. Also batch-1 decode tokens/s for us and generate().

    python benchmarks/throughput.py [--model PATH] [--num-requests 64] [--dtype float32] [--json OUT]
"""

import argparse
import json
import platform
import random
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import GenerationConfig

from engine import Engine, EngineConfig, SamplingParams
from engine.loader import load_model


@dataclass
class Request:
    prompt: list[int]
    output_len: int


@dataclass
class Result:
    name: str
    seconds: float
    output_tokens: int

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds


def make_workload(n: int, vocab: int, seed: int, prompt_range=(32, 512), output_range=(16, 256)) -> list[Request]:
    rng = random.Random(seed)
    # Ids above the first few hundred avoid the special and control tokens.
    return [
        Request([rng.randrange(1000, vocab) for _ in range(rng.randint(*prompt_range))], rng.randint(*output_range))
        for _ in range(n)
    ]


def run_ours(model: str, workload: list[Request], dtype: str) -> Result:
    engine = Engine(EngineConfig(dtype=dtype))
    engine.load_model(model)
    return run_engine(engine, workload)


def run_engine(engine: Engine, workload: list[Request]) -> Result:
    """The workload through a loaded engine, all requests submitted at once, after a short warm-up."""
    engine.add_request("warmup", workload[0].prompt, SamplingParams(max_tokens=2, temperature=0, ignore_eos=True))
    while engine.has_unfinished():
        engine.step()
    start = time.perf_counter()
    for i, r in enumerate(workload):
        engine.add_request(str(i), r.prompt, SamplingParams(max_tokens=r.output_len, temperature=0, ignore_eos=True))
    produced = 0
    while engine.has_unfinished():
        produced += sum(len(o.new_token_ids) for o in engine.step())
    seconds = time.perf_counter() - start
    assert produced == sum(r.output_len for r in workload)
    return Result("ours (continuous batching, paged KV)", seconds, produced)


def greedy_config(max_new_tokens: int, pad_token_id: int) -> GenerationConfig:
    return GenerationConfig(
        max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
        eos_token_id=None, pad_token_id=pad_token_id,
    )


@torch.inference_mode()
def run_static_generate(model, workload: list[Request], batch_size: int = 16) -> Result:
    pad = 0
    start = time.perf_counter()
    for b in range(0, len(workload), batch_size):
        batch = workload[b : b + batch_size]
        width = max(len(r.prompt) for r in batch)
        ids = torch.tensor([[pad] * (width - len(r.prompt)) + r.prompt for r in batch], device=model.device)
        mask = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in batch], device=model.device)
        model.generate(ids, attention_mask=mask, generation_config=greedy_config(max(r.output_len for r in batch), pad))
    seconds = time.perf_counter() - start
    return Result(f"transformers generate(), static batches of {batch_size}", seconds, sum(r.output_len for r in workload))


def run_transformers_cb(
    model, workload: list[Request], exclude_setup: bool = False, hints: bool = False, cb_config=None
) -> Result:
    """exclude_setup: time from the first request to the last result, leaving out building and
    warming up the manager (on a GPU it captures CUDA graphs), as run_engine's warm-up is left out.
    hints: size the manager from the workload's lengths and count, as generate_batch() does.
    cb_config: a transformers ContinuousBatchingConfig (None: transformers' defaults)."""
    # generate_batch fails on inference tensors, so no inference_mode here (no_grad is applied inside).
    config = greedy_config(max(r.output_len for r in workload), 0)
    config.eos_token_id = -1
    workload_hints = None
    if hints:
        from transformers.generation.continuous_batching.utils import WorkloadHints

        workload_hints = WorkloadHints(max(len(r.prompt) for r in workload), config.max_new_tokens, len(workload))
    start = time.perf_counter()
    with model.continuous_batching_context_manager(
        generation_config=config, warmup=True, workload_hints=workload_hints, continuous_batching_config=cb_config
    ) as manager:
        if exclude_setup:
            start = time.perf_counter()
        ids = [manager.add_request(r.prompt, max_new_tokens=r.output_len, eos_token_id=-1) for r in workload]
        produced, finished = 0, 0
        while finished < len(ids):
            result = manager.get_result(timeout=1)
            if result is not None and result.is_finished():
                finished += 1
                produced += len(result.generated_tokens)
        last_result = time.perf_counter()
    seconds = (last_result if exclude_setup else time.perf_counter()) - start
    return Result("transformers continuous batching (generate_batch manager)", seconds, produced)


def engine_decode_rate(engine: Engine, request_id: str, prompt: list[int], n: int) -> float:
    """Decode tokens/s of one request alone in a loaded engine, from its first token to its last (no prefill)."""
    engine.add_request(request_id, prompt, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True))
    times = []
    while engine.has_unfinished():
        if engine.step():  # a step that only prefills a chunk of a long prompt yields no token
            times.append(time.perf_counter())
    return (n - 1) / (times[-1] - times[0])


def decode_batch1(model: str, reference, prompt: list[int], n: int, dtype: str, rounds: int = 3) -> dict:
    """Decode tokens/s at batch 1, ours and generate() in alternating rounds (medians).

    Alternating keeps a change in machine load from favouring whichever ran second.
    """
    engine = Engine(EngineConfig(dtype=dtype))
    engine.load_model(model)
    ids = torch.tensor([prompt])
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        reference.generate(ids, attention_mask=mask, generation_config=greedy_config(4, 0))  # warm-up
    ours, theirs = [], []
    for r in range(rounds):
        ours.append(engine_decode_rate(engine, f"b1-{r}", prompt, n))
        with torch.inference_mode():
            t0 = time.perf_counter()
            reference.generate(ids, attention_mask=mask, generation_config=greedy_config(1, 0))
            t1 = time.perf_counter()
            reference.generate(ids, attention_mask=mask, generation_config=greedy_config(n, 0))
            t2 = time.perf_counter()
        theirs.append((n - 1) / ((t2 - t1) - (t1 - t0)))
    return {"ours": statistics.median(ours), "generate": statistics.median(theirs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(Path.home() / ".cache/appliance-tests/models/smollm2-135m-instruct"))
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--skip", nargs="*", default=[], choices=["static", "cb", "batch1"])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    torch_dtype = getattr(torch, args.dtype)
    reference = load_model(args.model, torch_dtype).model
    reference.set_attn_implementation("sdpa")
    workload = make_workload(args.num_requests, reference.config.vocab_size, args.seed)
    print(f"workload: {len(workload)} requests, {sum(len(r.prompt) for r in workload)} prompt tokens, "
          f"{sum(r.output_len for r in workload)} output tokens; {args.dtype}; {torch.get_num_threads()} threads")

    results = [run_ours(args.model, workload, args.dtype)]
    print(f"  {results[-1].name}: {results[-1].tokens_per_s:.1f} tok/s", flush=True)
    if "static" not in args.skip:
        results.append(run_static_generate(reference, workload))
        print(f"  {results[-1].name}: {results[-1].tokens_per_s:.1f} tok/s", flush=True)
    if "cb" not in args.skip:
        results.append(run_transformers_cb(reference, workload))
        print(f"  {results[-1].name}: {results[-1].tokens_per_s:.1f} tok/s", flush=True)
    batch1 = {}
    if "batch1" not in args.skip:
        batch1 = decode_batch1(args.model, reference, workload[0].prompt[:64], args.decode_tokens, args.dtype)

    print(f"\n{'system':<62}{'seconds':>9}{'out tok':>9}{'tok/s':>9}{'ours ×':>8}")
    for r in results:
        print(f"{r.name:<62}{r.seconds:>9.1f}{r.output_tokens:>9}{r.tokens_per_s:>9.1f}"
              f"{results[0].tokens_per_s / r.tokens_per_s:>8.2f}")
    if batch1:
        print(f"\nbatch-1 decode: ours {batch1['ours']:.1f} tok/s, generate() {batch1['generate']:.1f} tok/s, "
              f"ratio {batch1['ours'] / batch1['generate']:.2f}")
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    if args.json:
        args.json.write_text(json.dumps({
            "results": [asdict(r) | {"tokens_per_s": r.tokens_per_s} for r in results],
            "batch1_decode_tokens_per_s": batch1,
            "dtype": args.dtype,
            "num_requests": len(workload),
        }, indent=2))


if __name__ == "__main__":
    main()
