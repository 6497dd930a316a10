"""Where a batch-1 decode step's time goes on CPU, and how fast each batch-1 kernel reads its weights.

Used by benchmarks/quantization_speed.py (its `profile` and `kernels` parts).
"""

import time
import warnings

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from engine import Engine, SamplingParams
from engine.quantization.at_load import int4_grouped, int8_per_channel

MATMULS = {"aten::mm", "aten::addmm", "aten::mv", "aten::addmv", "aten::bmm", "aten::_weight_int8pack_mm",
           "aten::_weight_int4pack_mm_for_cpu"}


def profile_decode(engine: Engine, prompt: list[int], steps: int) -> dict:
    """Milliseconds per decode step of one request alone, under torch's profiler: the matrix products by
    kernel, attention, the other operators, and the rest of the wall time (Python and dispatch)."""
    engine.add_request("profile", prompt, SamplingParams(max_tokens=steps + 1, temperature=0, ignore_eos=True))
    engine.step()  # the prefill and the first token
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start, taken = time.perf_counter(), 0
        while engine.has_unfinished():
            engine.step()
            taken += 1
        wall_ms = (time.perf_counter() - start) * 1e3 / taken
    events = prof.key_averages()
    per_step = {e.key: e.self_cpu_time_total / 1e3 / taken for e in events}
    matmuls = {k.removeprefix("aten::"): v for k, v in per_step.items() if k in MATMULS}
    attention = sum(v for k, v in per_step.items() if "scaled_dot_product" in k)
    operators = sum(per_step.values())
    return {"wall_ms": wall_ms, "matmul_ms": matmuls, "attention_ms": attention,
            "other_operators_ms": operators - sum(matmuls.values()) - attention, "python_ms": wall_ms - operators}


def linear_shapes(config) -> list[tuple[int, int]]:
    """(out, in) of every decoder layer's linear layers, layer by layer."""
    h, i = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    return [(q, h), (kv, h), (kv, h), (h, q), (i, h), (i, h), (h, i)] * config.num_hidden_layers


def _fbgemm_w8a8(w: torch.Tensor, scale: torch.Tensor):
    """fbgemm's dynamic int8 linear (torch's quantized engine: x86 VNNI) over the same int8 weights."""
    with warnings.catch_warnings():  # torch's quantized tensors are deprecated; measured here as a candidate
        warnings.simplefilter("ignore")
        q = torch.quantize_per_channel(w, scale, torch.zeros(len(scale), dtype=torch.long), 0, torch.qint8)
    packed = torch.ops.quantized.linear_prepack(q, None)
    return lambda x: torch.ops.quantized.linear_dynamic(x, packed, True)


def kernel_rates(config, repeats: int = 5) -> dict[str, float]:
    """GB/s of weights read by each batch-1 kernel over one model's linear layers (best of repeats)."""
    torch.manual_seed(0)
    weights = [torch.randn(n, k) for n, k in linear_shapes(config)]
    inputs = {k: torch.randn(1, k) for k in {w.shape[1] for w in weights}}
    int8 = [int8_per_channel(w) for w in weights]
    kernels = {
        "float32 F.linear": [((lambda x, w=w: F.linear(x, w)), w.nbytes) for w in weights],
        "int8 weight-only (torch, bfloat16 activations)": [(layer, layer.weight_bytes()) for layer in int8],
        "int4 g32 weight-only (torch, bfloat16 activations)": [(layer, layer.weight_bytes()) for layer in
                                                               (int4_grouped(w) for w in weights)],
        "int8 W8A8 dynamic (fbgemm)": [(_fbgemm_w8a8(w, layer.scale.float()), layer.weight_bytes())
                                       for w, layer in zip(weights, int8)],
    }
    rates = {}
    for name, layers in kernels.items():
        best = min(_timed(lambda: [f(inputs[w.shape[1]]) for (f, _), w in zip(layers, weights)])
                   for _ in range(repeats))
        rates[name] = sum(b for _, b in layers) / best / 1e9
    flat = torch.randn(sum(w.numel() for w in weights))
    rates["ceiling: a sum over as many bytes"] = flat.nbytes / min(_timed(flat.sum) for _ in range(repeats)) / 1e9
    return rates


def _timed(f) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start
