"""GPU fast-path benchmark (issue 7): our engine against transformers on the same device, same run.

Dummy (random) weights from configs built in code, so nothing is downloaded: a Llama-3.2-1B-shaped
and a Llama-3.1-8B-shaped model (and "tiny" for CPU smoke runs). For each run it measures:
  1. device bandwidth: a device-to-device copy (1 GiB on CUDA, timed with CUDA events), in GB/s
     counting the bytes read and the bytes written;
  2. batch-1 decode per model: one request (128-token prompt, 256 output tokens, EOS ignored)
     through our engine, tokens/s from the first output token to the last (no prefill), and
     MBU = (weight bytes + KV bytes read per token) x tokens/s / measured bandwidth;
     generate() at batch 1 on the same model and the ratio ours / generate();
  3. a mixed workload, as nano-vllm's bench.py: 256 requests, prompt and output lengths uniform in
     100-1024 (seeded), EOS ignored; our engine (all submitted at once), transformers' continuous
     batching (the manager behind generate_batch, per-request max_new_tokens) and generate() in
     static batches; output tokens/s and ours / each.
Targets (issue 7): llama-3.1-8b batch-1 MBU >= 0.70; mixed ours / transformers CB >= 3.

Weight bytes: every parameter once (a tied embedding once), as gpt-fast's generate.py first counted
(its parameters and buffers; a Llama's only buffer here is the small rotary table). Only the looked-up
rows of an input embedding table are read per token, so the JSON also has the MBU without an untied
embedding table (gpt-fast's later _get_model_size leaves nn.Embedding children out).
KV bytes per decode token: 2 x layers x kv_heads x head_dim x dtype bytes x the mean context length.

On the GPU box, from the repo root (nothing is fetched there; it needs the transformers version that
pyproject.toml pins, which the box's own may not be). Both models with every baseline take well over
10 minutes, so split the work; each run measures our engine again, so every ratio compares numbers
taken in one run, and lines print (and --json is rewritten) as each part ends. Our KV cache is sized by
the engine's gpu_memory_fraction unless --kv-cache-gib is given.
    python3 -m benchmarks.cuda_fast_path --models llama-3.2-1b --generate-requests 128 --json $OUT/1b.json
    python3 -m benchmarks.cuda_fast_path --models llama-3.1-8b --baselines cb --json $OUT/8b-cb.json
    python3 -m benchmarks.cuda_fast_path --models llama-3.1-8b --baselines generate --generate-requests 64 \
        --json $OUT/8b-generate.json
CPU smoke run (seconds):
    python -m benchmarks.cuda_fast_path --device cpu --models tiny --num-requests 6 --min-len 8 \
        --max-len 24 --prompt-tokens 16 --decode-tokens 16
"""

import argparse
import gc
import json
import platform
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch
import transformers
from transformers import ContinuousBatchingConfig, LlamaConfig, StoppingCriteria, StoppingCriteriaList

from benchmarks.throughput import (
    Request,
    Result,
    engine_decode_rate,
    greedy_config,
    make_workload,
    run_engine,
    run_static_generate,
    run_transformers_cb,
)
from engine import Engine, EngineConfig
from engine.config import ATTENTION_BACKENDS
from engine.loader import load_dummy

MBU_TARGET = 0.70  # for llama-3.1-8b
CB_RATIO_TARGET = 3.0


def llama3_rope(factor: float) -> dict:
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}


LLAMA3 = dict(vocab_size=128256, rope_theta=500000.0, max_position_embeddings=131072, rms_norm_eps=1e-5,
              bos_token_id=128000, eos_token_id=128001)
SHAPES = {
    "llama-3.2-1b": LLAMA3 | dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                  num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                                  tie_word_embeddings=True, rope_scaling=llama3_rope(32.0)),
    "llama-3.1-8b": LLAMA3 | dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                  num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                                  tie_word_embeddings=False, rope_scaling=llama3_rope(8.0)),
    # make_workload draws token ids from 1000 up, so the vocabulary must be larger than that.
    "tiny": dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, max_position_embeddings=4096, tie_word_embeddings=True),
}


def model_config(name: str) -> LlamaConfig:
    return LlamaConfig(architectures=["LlamaForCausalLM"], **SHAPES[name])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_bandwidth(device: torch.device, nbytes: int, reps: int = 10) -> float:
    """GB/s of a device-to-device copy, counting bytes read and written (mean over reps, after a warm-up)."""
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            dst.copy_(src)
        end.record()
        sync(device)
        seconds = start.elapsed_time(end) / 1000
    else:
        t0 = time.perf_counter()
        for _ in range(reps):
            dst.copy_(src)
        seconds = time.perf_counter() - t0
    return 2 * nbytes * reps / seconds / 1e9


def weight_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameter bytes, a tied embedding once; the same without an untied input embedding table)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())  # parameters() skips shared ones
    embedding = model.get_input_embeddings().weight
    untied = embedding is not model.get_output_embeddings().weight
    return total, total - (embedding.numel() * embedding.element_size() if untied else 0)


def kv_bytes_per_context_token(config: LlamaConfig, dtype: torch.dtype) -> int:
    return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * dtype.itemsize


class TokenTimes(StoppingCriteria):
    """Records when each new token is ready: generate() asks its stopping criteria once per token."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        sync(self.device)
        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@torch.inference_mode()
def generate_decode_rate(model, prompt: list[int], n: int) -> float:
    """generate()'s batch-1 decode tokens/s from its first token to its last, timed as ours is.

    (throughput.py takes a 1-token run off an n-token run instead: on a busy CPU that difference
    came out negative for a few tokens.)"""
    ids = torch.tensor([prompt], device=model.device)
    times = TokenTimes(model.device)
    model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=greedy_config(n, 0),
                   stopping_criteria=StoppingCriteriaList([times]))
    return (n - 1) / (times.times[-1] - times.times[0])


def free_device_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_ours(config: LlamaConfig, engine_config: EngineConfig, prompt: list[int], workload: list[Request] | None,
             args) -> dict:
    """Our engine: batch-1 decode (median of rounds) and the mixed workload; the engine is freed on return."""
    engine = Engine(engine_config)
    model = engine.load_model(config).model
    weights, weights_read = weight_bytes(model)
    runner = engine.session.runner  # what ran: the warm-up may have handed triton over to torch
    out = {"weight_bytes": weights, "weight_bytes_without_embedding_table": weights_read,
           "kv_cache_bytes": engine.kv_cache_bytes, "attention_backend": runner.backend, "fused_layers": runner.fused,
           "cuda_graphs": runner.graphs is not None}
    del model
    if "batch1" in args.parts:
        engine_decode_rate(engine, "warmup-b1", prompt, 4)
        rates = [engine_decode_rate(engine, f"b1-{r}", prompt, args.decode_tokens) for r in range(args.rounds)]
        out["batch1_tokens_per_s"] = statistics.median(rates)
    if workload is not None:
        out["mixed"] = run_engine(engine, workload)
    engine.unload_model()
    return out


def cpu_cb_config(workload: list[Request], max_batch_tokens: int) -> ContinuousBatchingConfig:
    """transformers sizes its CB cache from free memory; on CPU that is most of the machine's RAM
    (11 GB on a 23 GB box, mostly an attention mask over every cached token), so on CPU it gets just
    the blocks that hold the whole workload at once, and our max_num_batched_tokens."""
    page = ContinuousBatchingConfig().page_size
    blocks = sum(-(-(len(r.prompt) + r.output_len) // page) for r in workload)
    return ContinuousBatchingConfig(num_blocks=blocks, max_batch_tokens=max_batch_tokens)


def run_baselines(config: LlamaConfig, dtype: torch.dtype, device: torch.device, prompt: list[int],
                  workload: list[Request] | None, args) -> dict:
    """transformers on a model with the same dummy weights, loaded once ours is freed (one model on the
    device at a time). A model of its own, not the engine's: the engine sets its paged attention on the
    model it runs, and generate() needs "sdpa" (CB switches to what it needs and back by itself)."""
    # load_dummy's default seed is the one Engine.load_model uses: the very same weights as ours.
    model = load_dummy(config, dtype, str(device)).model
    model.set_attn_implementation("sdpa")
    out = {}
    if "batch1" in args.parts and "generate" in args.baselines:
        run_static_generate(model, [Request(prompt, 4)], batch_size=1)  # warm-up
        rates = [generate_decode_rate(model, prompt, args.decode_tokens) for _ in range(args.rounds)]
        out["batch1_tokens_per_s"] = statistics.median(rates)
    if workload is not None and "cb" in args.baselines:
        cb_config = None if device.type == "cuda" else cpu_cb_config(workload, args.max_num_batched_tokens)
        out["cb"] = run_transformers_cb(model, workload, exclude_setup=True, hints=True, cb_config=cb_config)
        model.set_attn_implementation("sdpa")  # the manager restores it; made sure of for generate()
    if workload is not None and "generate" in args.baselines:
        subset = workload[: args.generate_requests]
        out["generate"] = run_static_generate(model, subset, args.generate_batch_size)
        out["generate_requests"] = len(subset)
    del model
    free_device_memory(device)
    return out


def result_json(r: Result, **extra) -> dict:
    return asdict(r) | {"tokens_per_s": r.tokens_per_s} | extra


def bench_model(name: str, device: torch.device, dtype: torch.dtype, bandwidth: float, args, report: dict,
                save) -> None:
    """Fills report (this model's entry) part by part, printing and saving as it goes."""
    config = model_config(name)
    engine_config = EngineConfig(
        device=str(device), dtype=args.dtype, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, attention_backend=args.attention_backend,
        cuda_graphs=args.cuda_graphs, fused_layers=args.fused_layers, async_scheduling=args.async_scheduling,
        # None: the engine sizes the KV cache from gpu_memory_fraction once the weights are loaded.
        kv_cache_bytes=None if args.kv_cache_gib is None else int(args.kv_cache_gib * 2**30),
    )
    prompt = make_workload(1, config.vocab_size, args.seed, (args.prompt_tokens,) * 2, (1, 1))[0].prompt
    workload = None
    if "mixed" in args.parts:
        lengths = (args.min_len, args.max_len)
        workload = make_workload(args.num_requests, config.vocab_size, args.seed, lengths, lengths)

    ours = run_ours(config, engine_config, prompt, workload, args)
    free_device_memory(device)
    for key in ("weight_bytes", "weight_bytes_without_embedding_table", "kv_cache_bytes", "attention_backend",
                "fused_layers", "cuda_graphs"):
        report[key] = ours[key]
    report["kv_bytes_per_context_token"] = kv_bytes_per_context_token(config, dtype)
    print(f"{name}: {report['weight_bytes'] / 1e9:.2f} GB of weights (all parameters, a tied embedding once), "
          f"{report['kv_bytes_per_context_token']} KV bytes per context token; our KV cache "
          f"{report['kv_cache_bytes'] / 2**30:.2f} GiB, {report['attention_backend']} attention, fused layers "
          f"{'on' if report['fused_layers'] else 'off'}, CUDA graphs {'on' if report['cuda_graphs'] else 'off'}", flush=True)
    if "batch1" in args.parts:
        # Decode step j (1..n-1) reads the KV of prompt + j tokens: a mean context of prompt + n/2.
        mean_context = args.prompt_tokens + args.decode_tokens / 2
        kv_read = report["kv_bytes_per_context_token"] * mean_context
        rate = ours["batch1_tokens_per_s"]
        b1 = report["batch1"] = {
            "prompt_tokens": args.prompt_tokens, "output_tokens": args.decode_tokens, "rounds": args.rounds,
            "mean_context_tokens": mean_context, "kv_bytes_per_decode_token": kv_read, "ours_tokens_per_s": rate,
            "mbu": (report["weight_bytes"] + kv_read) * rate / (bandwidth * 1e9),
            "mbu_without_embedding_table":
                (report["weight_bytes_without_embedding_table"] + kv_read) * rate / (bandwidth * 1e9),
        }
        print(f"  batch-1 decode (prompt {args.prompt_tokens}, {args.decode_tokens} tokens, median of {args.rounds}):"
              f" ours {rate:.1f} tok/s, MBU {b1['mbu']:.3f} ({b1['mbu_without_embedding_table']:.3f} without the"
              f" embedding table)", flush=True)
    if workload is not None:
        r = ours["mixed"]
        mixed = report["mixed"] = {
            "num_requests": len(workload), "prompt_tokens": sum(len(w.prompt) for w in workload),
            "output_tokens": sum(w.output_len for w in workload), "length_range": [args.min_len, args.max_len],
            "ours": result_json(r, num_requests=len(workload)),
        }
        print(f"  mixed workload: {mixed['num_requests']} requests, {mixed['prompt_tokens']} prompt and "
              f"{mixed['output_tokens']} output tokens (lengths uniform in {args.min_len}-{args.max_len}, EOS ignored)")
        print(f"    {r.name:<72}{r.seconds:>8.1f} s{r.tokens_per_s:>10.1f} tok/s", flush=True)
    save()
    if not args.baselines:
        return

    theirs = run_baselines(config, dtype, device, prompt, workload, args)
    if "batch1_tokens_per_s" in theirs:
        b1 = report["batch1"]
        b1["generate_tokens_per_s"] = theirs["batch1_tokens_per_s"]
        b1["ours_over_generate"] = b1["ours_tokens_per_s"] / theirs["batch1_tokens_per_s"]
        print(f"  batch-1 decode: generate() {b1['generate_tokens_per_s']:.1f} tok/s, "
              f"ours/generate {b1['ours_over_generate']:.2f}", flush=True)
    for key, label in (("cb", "ours_over_cb"), ("generate", "ours_over_generate")):
        if key not in theirs:
            continue
        r = theirs[key]
        count = theirs["generate_requests"] if key == "generate" else len(workload)
        mixed = report["mixed"]
        mixed[key] = result_json(r, num_requests=count)
        # Static batches run one after another, so tokens/s of the first K requests stands for all of them.
        mixed[label] = mixed["ours"]["tokens_per_s"] / r.tokens_per_s
        subset = f" (first {count} of {len(workload)} requests)" if count < len(workload) else ""
        print(f"    {r.name + subset:<72}{r.seconds:>8.1f} s{r.tokens_per_s:>10.1f} tok/s   "
              f"ours x {mixed[label]:.2f}", flush=True)
    save()


def targets(models: dict) -> list[dict]:
    checks = []
    if "batch1" in models.get("llama-3.1-8b", {}):
        checks.append({"what": "llama-3.1-8b batch-1 MBU", "value": models["llama-3.1-8b"]["batch1"]["mbu"],
                       "target": MBU_TARGET})
    for name, m in models.items():
        if "ours_over_cb" in m.get("mixed", {}):
            checks.append({"what": f"{name} mixed ours / transformers CB", "value": m["mixed"]["ours_over_cb"],
                           "target": CB_RATIO_TARGET})
    return [c | {"met": c["value"] >= c["target"]} for c in checks]


def parse_args(argv=None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if cuda else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                        help="default bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--models", default="llama-3.2-1b,llama-3.1-8b", help=f"comma list of {', '.join(SHAPES)}")
    parser.add_argument("--parts", default="batch1,mixed", help="comma list of batch1, mixed")
    parser.add_argument("--baselines", default="cb,generate", help="comma list of cb, generate; '' for ours only")
    parser.add_argument("--num-requests", type=int, default=256)
    parser.add_argument("--min-len", type=int, default=100, help="shortest prompt and output, in tokens")
    parser.add_argument("--max-len", type=int, default=1024, help="longest prompt and output, in tokens")
    parser.add_argument("--generate-requests", type=int, help="run generate() on the first K requests only")
    parser.add_argument("--generate-batch-size", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=128, help="batch-1 prompt length")
    parser.add_argument("--decode-tokens", type=int, default=256, help="batch-1 output length")
    parser.add_argument("--rounds", type=int, default=3, help="batch-1 rounds (median)")
    parser.add_argument("--kv-cache-gib", type=float,
                        help="our engine's KV cache; default on cuda: the engine's gpu_memory_fraction sizing, on cpu 0.25")
    parser.add_argument("--max-num-seqs", type=int, default=EngineConfig.max_num_seqs)
    parser.add_argument("--max-num-batched-tokens", type=int, default=EngineConfig.max_num_batched_tokens)
    parser.add_argument("--attention-backend", default=EngineConfig.attention_backend, choices=ATTENTION_BACKENDS)
    parser.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=EngineConfig.cuda_graphs)
    parser.add_argument("--fused-layers", action=argparse.BooleanOptionalAction, default=EngineConfig.fused_layers,
                        help="merged projections and fused kernels on the triton backend (--no-fused-layers: transformers' layers)")
    parser.add_argument("--async-scheduling", default=EngineConfig.async_scheduling, choices=["auto", "on", "off"],
                        help="off: steps one after the other (to measure what the overlap gives)")
    parser.add_argument("--copy-gib", type=float, help="bandwidth copy size; default 1 on cuda, 1/16 on cpu")
    parser.add_argument("--seed", type=int, default=0, help="workload seed (the dummy weights use load_dummy's)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    on_cuda = args.device == "cuda"
    args.dtype = args.dtype or ("bfloat16" if on_cuda else "float32")
    if args.kv_cache_gib is None and not on_cuda:
        args.kv_cache_gib = 0.25  # the engine's CPU default (2 GiB) is slow to allocate for a smoke run
    args.copy_gib = args.copy_gib or (1.0 if on_cuda else 1 / 16)
    for flag, allowed in (("models", SHAPES), ("parts", {"batch1", "mixed"}), ("baselines", {"cb", "generate"})):
        chosen = [x for x in getattr(args, flag).split(",") if x]
        if set(chosen) - set(allowed):
            parser.error(f"--{flag}: unknown {', '.join(sorted(set(chosen) - set(allowed)))}")
        setattr(args, flag, chosen)
    return args


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    copy_bytes = int(args.copy_gib * 2**30)
    bandwidth = measure_bandwidth(device, copy_bytes)
    free_device_memory(device)  # torch would keep the copy's 2 GiB, and the KV sizing counts it as taken
    report = {
        "device": {"type": device.type, "name": device_name(device), "bandwidth_gb_s": bandwidth,
                   "bandwidth_copy_bytes": copy_bytes},
        "dtype": args.dtype, "seed": args.seed, "torch": torch.__version__, "transformers": transformers.__version__,
        "engine": {"max_num_seqs": args.max_num_seqs, "max_num_batched_tokens": args.max_num_batched_tokens,
                   "attention_backend": args.attention_backend, "cuda_graphs": args.cuda_graphs,
                   "fused_layers": args.fused_layers, "kv_cache_gib": args.kv_cache_gib},  # None: sized by the engine's gpu_memory_fraction
        "models": {}, "targets": [],
    }
    print(f"device: {report['device']['name']} ({device.type}), {args.dtype}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}; copy bandwidth {bandwidth:.1f} GB/s "
          f"(read + write, {copy_bytes / 2**30:.2f} GiB copied)", flush=True)

    def save() -> None:  # after each part, so a run cut short keeps what it measured
        report["targets"] = targets(report["models"])
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))

    for name in args.models:
        report["models"][name] = {}
        bench_model(name, device, dtype, bandwidth, args, report["models"][name], save)
    for c in report["targets"]:
        print(f"target: {c['what']} {c['value']:.2f} >= {c['target']:.2f}: {'met' if c['met'] else 'MISSED'}")
    return report


def main(argv=None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
