"""top_p without top_k: the sampler's candidates-first cutoff vs sorting the whole vocabulary.

One run on the same logits: SmolLM2-135M's next-token logits for 8 prompts (64 rows, each prompt
8 times) at temperatures 1.0 and 0.7, and random flat logits (the worst case: every nucleus is
larger than the candidates, so the full sort runs as well). Prints ms per call and the ratio.

    python -m benchmarks.nucleus_sampling [--model PATH]
"""

import argparse
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine.sampler import _cutoff, _top_k_top_p
from tests.conftest import CACHE_DIR

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time", "The best way to learn",
           "In 1492,", "My favourite food is", "import numpy as", "Dear Sir,"]


def ms_per_call(fn, repeats: int = 5) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return 1000 * (time.perf_counter() - start) / repeats


def compare(name: str, logits: torch.Tensor, top_p: float = 0.9) -> None:
    rows, vocab = logits.shape
    top_k, p = [0] * rows, torch.full((rows, 1), top_p)
    ours = ms_per_call(lambda: _top_k_top_p(logits, top_k, p))
    full = ms_per_call(lambda: logits.masked_fill(logits < _cutoff(logits, top_k, p, vocab)[0], float("-inf")))
    sizes = (_top_k_top_p(logits, top_k, p) > float("-inf")).sum(dim=1)
    print(f"{name:28s} candidates-first {ours:7.1f} ms   full sort {full:7.1f} ms   {full / ours:4.1f}x   "
          f"nucleus sizes median {int(sizes.median())}, max {int(sizes.max())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(CACHE_DIR / "models" / "smollm2-135m-instruct"))
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    real = torch.cat([model(**tokenizer(p, return_tensors="pt")).logits[:, -1] for p in PROMPTS]).repeat(8, 1)
    print(f"top_p 0.9, no top_k, 64 rows x {real.shape[1]} tokens, torch threads {torch.get_num_threads()}")
    compare("SmolLM2 logits, T=1.0", real)
    compare("SmolLM2 logits, T=0.7", real / 0.7)
    torch.manual_seed(0)
    compare("random flat logits", torch.randn_like(real) * 3)


if __name__ == "__main__":
    main()
