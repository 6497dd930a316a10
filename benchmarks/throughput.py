"""Offline throughput: our engine vs transformers generate() and transformers' continuous batching.

One process, one run, one seeded workload on the same model, EOS ignored:
  --workload mixed24  24 requests, prompts uniform in 32-256 tokens, outputs in 16-128 (issue 20's);
  --workload mixed64  64 requests, prompts in 32-512, outputs in 16-256 (issue 2's).
  (a) our engine with the appliance's defaults (dtype "auto"), all requests submitted at once;
  (b) transformers generate() in static left-padded batches of 8 and of 16 (each batch runs to its
      longest output), in float32 and, where the hardware computes it natively, bfloat16; the best
      of these is the baseline;
  (c) transformers' own continuous batching (the generate_batch manager, per-request max_new_tokens).
Throughput counts only the requested output tokens. Also: the machine's measured GEMM rate, the
workload's compute bound at that rate (benchmarks/compute_bound.py) and our fraction of it, and
batch-1 decode tokens/s for us and generate() in the served dtype.

    python -m benchmarks.throughput [--workload mixed24] [--model PATH] [--dtype auto] [--json OUT]
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

from benchmarks.compute_bound import compute_bound_tokens_per_s, gemm_flops_per_s
from engine import Engine, EngineConfig, SamplingParams
from engine.config import cpu_has_native_bf16
from engine.loader import load_model

# name: (requests, prompt token range, output token range)
WORKLOADS = {"mixed24": (24, (32, 256), (16, 128)), "mixed64": (64, (32, 512), (16, 256))}


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
    result = run_engine(engine, workload)
    result.name = f"ours (continuous batching, paged KV), {engine.config.resolved_dtype}"
    return result


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
    return Result(f"transformers generate(), static batches of {batch_size}, {model.dtype}".replace("torch.", ""),
                  seconds, sum(r.output_len for r in workload))


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

    Alternating keeps a change in machine load from favouring whichever ran second. Each round has a
    prompt of its own (its first token changed): the same prompt again would hit the prefix cache,
    and a context whose cached blocks lie apart from its new ones is gathered rather than read in
    place, which is not what batch-1 decode measures (docs/BENCHMARKS.md, issue 20).
    """
    engine = Engine(EngineConfig(dtype=dtype))
    engine.load_model(model)
    with torch.inference_mode():
        reference.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                           generation_config=greedy_config(4, 0))  # warm-up
    ours, theirs = [], []
    for r in range(rounds):
        round_prompt = [(prompt[0] + 1 + r) % reference.config.vocab_size] + prompt[1:]
        ids = torch.tensor([round_prompt])
        mask = torch.ones_like(ids)
        ours.append(engine_decode_rate(engine, f"b1-{r}", round_prompt, n))
        with torch.inference_mode():
            t0 = time.perf_counter()
            reference.generate(ids, attention_mask=mask, generation_config=greedy_config(1, 0))
            t1 = time.perf_counter()
            reference.generate(ids, attention_mask=mask, generation_config=greedy_config(n, 0))
            t2 = time.perf_counter()
        theirs.append((n - 1) / ((t2 - t1) - (t1 - t0)))
    return {"ours": statistics.median(ours), "generate": statistics.median(theirs)}


def baseline_dtypes(device: str) -> list[str]:
    """float32, and bfloat16 where it is computed natively: emulated, it is tens of times slower."""
    return ["float32", "bfloat16"] if device.startswith("cuda") or cpu_has_native_bf16() else ["float32"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(Path.home() / ".cache/appliance-tests/models/smollm2-135m-instruct"))
    parser.add_argument("--workload", default="mixed24", choices=sorted(WORKLOADS))
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="what we serve in")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--skip", nargs="*", default=["cb"], choices=["static", "cb", "batch1"],
                        help="parts left out (default: transformers' continuous batching, which takes minutes)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    served = EngineConfig(dtype=args.dtype).resolved_dtype
    references = {name: load_model(args.model, getattr(torch, name)).model for name in baseline_dtypes("cpu")}
    if served not in references:
        references[served] = load_model(args.model, getattr(torch, served)).model
    for model in references.values():
        model.set_attn_implementation("sdpa")
    hf_config = references[served].config
    count, prompt_range, output_range = WORKLOADS[args.workload]
    workload = make_workload(count, hf_config.vocab_size, args.seed, prompt_range, output_range)
    flops = {name: gemm_flops_per_s(hf_config, getattr(torch, name)) for name in dict.fromkeys(["float32", served])}
    bound = compute_bound_tokens_per_s(hf_config, [(len(r.prompt), r.output_len) for r in workload], flops[served])
    print(f"workload {args.workload}: {len(workload)} requests, {sum(len(r.prompt) for r in workload)} prompt tokens, "
          f"{sum(r.output_len for r in workload)} output tokens; served in {served}; {torch.get_num_threads()} threads")
    print("GEMM " + ", ".join(f"{name} {rate / 1e9:.1f} GFLOP/s" for name, rate in flops.items())
          + f"; compute bound {bound:.1f} tok/s ({served})", flush=True)

    results = [run_ours(args.model, workload, args.dtype)]
    print(f"  {results[-1].name}: {results[-1].tokens_per_s:.1f} tok/s", flush=True)
    if "static" not in args.skip:
        for model in references.values():
            for batch_size in (8, 16):
                results.append(run_static_generate(model, workload, batch_size))
                print(f"  {results[-1].name}: {results[-1].tokens_per_s:.1f} tok/s", flush=True)
    if "cb" not in args.skip:
        results.append(run_transformers_cb(references[served], workload))
        print(f"  {results[-1].name}: {results[-1].tokens_per_s:.1f} tok/s", flush=True)
    batch1 = {}
    if "batch1" not in args.skip:
        batch1 = decode_batch1(args.model, references[served], workload[0].prompt[:64], args.decode_tokens, args.dtype)

    ours = results[0].tokens_per_s
    print(f"\n{'system':<66}{'seconds':>9}{'out tok':>9}{'tok/s':>9}{'ours ×':>8}")
    for r in results:
        print(f"{r.name:<66}{r.seconds:>9.1f}{r.output_tokens:>9}{r.tokens_per_s:>9.1f}{ours / r.tokens_per_s:>8.2f}")
    static = [r for r in results if r.name.startswith("transformers generate()")]
    baseline = max(static, key=lambda r: r.tokens_per_s) if static else None
    if baseline:
        print(f"\nbaseline (best generate()): {baseline.name}, {baseline.tokens_per_s:.1f} tok/s; "
              f"ours {ours / baseline.tokens_per_s:.2f}×")
    print(f"compute bound ({served}, {flops[served] / 1e9:.1f} GFLOP/s): {bound:.1f} tok/s; ours {ours / bound:.0%} of it")
    if batch1:
        print(f"batch-1 decode ({served}): ours {batch1['ours']:.1f} tok/s, generate() {batch1['generate']:.1f} tok/s, "
              f"ratio {batch1['ours'] / batch1['generate']:.2f}")
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    if args.json:
        args.json.write_text(json.dumps({
            "workload": args.workload,
            "results": [asdict(r) | {"tokens_per_s": r.tokens_per_s} for r in results],
            "baseline": baseline.name if baseline else None,
            "gemm_flops_per_s": flops,
            "compute_bound_tokens_per_s": bound,
            "fraction_of_compute_bound": ours / bound,
            "batch1_decode_tokens_per_s": batch1,
            "dtype": served,
            "num_requests": len(workload),
        }, indent=2))


if __name__ == "__main__":
    main()
