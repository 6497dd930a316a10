"""Quantized weights at a real shape (issue 27): fp8 and int4 against the served dtype, in the same run.

One shape (Llama-3.1-8B on the GPU; its tiny twin in the dry run), loaded as the appliance serves it, once
in the served dtype (bfloat16 on the GPU) and once per scheme quantized at load (fp8 through
`torch._scaled_mm` on GPUs with fp8, int4 through tinygemm; engine.quantization). For each: the weights'
bytes, the KV cache the engine then sized into the memory left (gpu_memory_fraction: smaller weights, more
KV), batch-1 decode tokens/s (median of rounds) and the smallest throughput workload's tokens/s. A scheme the device cannot run is refused by the loader with its reason, and the
report says so: on CPU (the dry run) int4 runs and fp8 is refused.
"""

import dataclasses
import statistics

from benchmarks.gpu_check_plan import Plan
from benchmarks.gpu_check_speed import batch1_prompt, workload
from benchmarks.model_shapes import SHAPES
from benchmarks.throughput import engine_decode_rate, run_engine
from engine import Engine
from engine.errors import ModelLoadError

SCHEMES = (None, "fp8", "int4")  # None: the served dtype, the peer


def measure_quantized(name: str, plan: Plan, entry: dict) -> None:
    """entry[label] for the served dtype and each scheme: {"refused": why} or the figures."""
    config = SHAPES[name].config(tiny=plan.tiny)
    requests = min(plan.workloads)
    for scheme in SCHEMES:
        served = dataclasses.replace(plan.served(), quantization=scheme)
        label = scheme or served.resolved_dtype
        engine = Engine(served)
        try:
            loaded = engine.load_model(config)
        except ModelLoadError as e:
            entry[label] = {"refused": str(e)}
            continue
        weights = loaded.weights
        del loaded
        engine_decode_rate(engine, "warm-up", batch1_prompt(plan, config.vocab_size, -1), 4)
        rates = [engine_decode_rate(engine, f"b1-{r}", batch1_prompt(plan, config.vocab_size, r),
                                    plan.batch1_output_len) for r in range(plan.batch1_rounds)]
        mixed = run_engine(engine, workload(plan, requests, config.vocab_size))
        entry[label] = {"weights": weights.packing, "weight_bytes": weights.bytes,
                        "kv_cache_bytes": engine.kv_cache_bytes,
                        "batch1_tokens_per_s": statistics.median(rates), "requests": requests,
                        "throughput_tokens_per_s": mixed.tokens_per_s}
        engine.unload_model()
