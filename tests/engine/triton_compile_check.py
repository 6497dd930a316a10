"""Compiles the paged-attention kernel for NVIDIA GPUs, ahead of time, without one.

Triton's compiler and the ptxas it ships run on any x86 host: this lowers the kernel through
TTIR, TTGIR, LLVM IR and PTX to a cubin for the variants below, built with the same
kernel_constants() the engine launches with. Run as a script in a
process without TRITON_INTERPRET (tests/engine/test_triton_compile.py does); prints one JSON line
per compiled variant and exits non-zero on the first failure.
"""

import json
import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from engine.triton_attention import _paged_attention_kernel, kernel_constants

SM90, SM80 = GPUTarget("cuda", 90, 32), GPUTarget("cuda", 80, 32)
# (target, model shape: query heads, kv heads, head dim, dtype, max query length: 1 decodes only).
# SmolLM2-135M (3 query heads a kv head, 64 dims) and Llama-3.1-8B (4, 128) on Hopper, decode and
# prefill tiles; float32 (exact dots); the 8B prefill tile on Ampere.
VARIANTS = [
    ("sm90", "smollm2-135m", 9, 3, 64, torch.bfloat16, 1),
    ("sm90", "smollm2-135m", 9, 3, 64, torch.bfloat16, 512),
    ("sm90", "llama-3.1-8b", 32, 8, 128, torch.bfloat16, 1),
    ("sm90", "llama-3.1-8b", 32, 8, 128, torch.bfloat16, 512),
    ("sm90", "smollm2-135m", 9, 3, 64, torch.float32, 512),
    ("sm80", "llama-3.1-8b", 32, 8, 128, torch.bfloat16, 512),
]
TARGETS = {"sm90": SM90, "sm80": SM80}
POINTER_TYPES = {torch.bfloat16: "*bf16", torch.float32: "*fp32"}


def signature(constants: dict, dtype: torch.dtype) -> dict:
    types = {}
    for name in _paged_attention_kernel.arg_names:
        if name in constants:
            types[name] = "constexpr"
        elif name in ("q_ptr", "k_cache_ptr", "v_cache_ptr", "out_ptr"):
            types[name] = POINTER_TYPES[dtype]
        elif name.endswith("_ptr"):
            types[name] = "*i32"
        elif name == "scale":
            types[name] = "fp32"
        else:
            types[name] = "i32"
    return types


def main() -> None:
    names = _paged_attention_kernel.arg_names
    for target, shape, heads, kv_heads, head_dim, dtype, max_query_len in VARIANTS:
        constants = kernel_constants(heads, kv_heads, head_dim, 16, max_query_len, dtype)
        source = ASTSource(_paged_attention_kernel, signature(constants, dtype),
                           {(names.index(k),): v for k, v in constants.items()})
        compiled = triton.compile(source, target=TARGETS[target])
        print(json.dumps({"target": target, "shape": shape, "dtype": str(dtype), "max_query_len": max_query_len,
                          "cubin_bytes": len(compiled.asm["cubin"]), "shared_bytes": compiled.metadata.shared}),
              flush=True)


if __name__ == "__main__":
    sys.exit(main())
