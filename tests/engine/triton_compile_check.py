"""Compiles the engine's Triton kernels for NVIDIA GPUs, ahead of time, without one.

Triton's compiler and the ptxas it ships run on any x86 host: this lowers each kernel through
TTIR, TTGIR, LLVM IR and PTX to a cubin for the variants below, built with the same constants
the engine launches with. Run as a script in a process without TRITON_INTERPRET
(tests/engine/test_triton_compile.py does); prints one JSON line per compiled variant and exits
non-zero on the first failure.
"""

import json
import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from engine.fused_kernels import (
    _rms_norm_kernel, _rotary_and_write_kv_kernel, _silu_and_mul_kernel, rms_norm_constants, rotary_constants,
    silu_and_mul_constants,
)
from engine.triton_attention import MERGE_CHUNK, _merge_partitions_kernel, _paged_attention_kernel, kernel_constants

TARGETS = {"sm90": GPUTarget("cuda", 90, 32), "sm80": GPUTarget("cuda", 80, 32)}
POINTER_TYPES = {torch.bfloat16: "*bf16", torch.float32: "*fp32"}
# Model shapes: (query heads, kv heads, head dim, hidden size, MLP width).
SHAPES = {"smollm2-135m": (9, 3, 64, 576, 1536), "llama-3.1-8b": (32, 8, 128, 4096, 14336),
          "gpt-oss-20b": (64, 8, 64, 2880, 2880), "gemma-2-9b": (16, 8, 256, 3584, 14336),
          "gemma-3-12b": (16, 8, 256, 3840, 15360)}
# Paged attention: (target, shape, dtype, max query length: 1 decodes only, split decode, layer features).
# SmolLM2-135M (3 query heads a kv head, 64 dims) and Llama-3.1-8B (4, 128) on Hopper, decode and prefill
# tiles; float32 (exact dots); the 8B prefill tile on Ampere; split batch-1 decodes (with the merge
# kernel) on both; gpt-oss's sinks (8 query heads a kv head) in a prefill tile and a split decode;
# Gemma 2's softcap with 256-dim heads (the widest tile); Gemma 3's images (each query's last key read).
ATTENTION_VARIANTS = [
    ("sm90", "smollm2-135m", torch.bfloat16, 1, False, ()),
    ("sm90", "smollm2-135m", torch.bfloat16, 512, False, ()),
    ("sm90", "llama-3.1-8b", torch.bfloat16, 1, False, ()),
    ("sm90", "llama-3.1-8b", torch.bfloat16, 512, False, ()),
    ("sm90", "smollm2-135m", torch.float32, 512, False, ()),
    ("sm80", "llama-3.1-8b", torch.bfloat16, 512, False, ()),
    ("sm90", "llama-3.1-8b", torch.bfloat16, 1, True, ()),
    ("sm80", "llama-3.1-8b", torch.bfloat16, 1, True, ()),
    ("sm90", "gpt-oss-20b", torch.bfloat16, 512, False, ("sinks",)),
    ("sm90", "gpt-oss-20b", torch.bfloat16, 1, True, ("sinks",)),
    ("sm90", "gemma-2-9b", torch.bfloat16, 512, False, ("softcap",)),
    ("sm90", "gemma-3-12b", torch.bfloat16, 512, False, ("images",)),
]
# The fused layer kernels for both shapes in bfloat16 on Hopper, and the 8B's on Ampere.
FUSED_VARIANTS = [("sm90", "smollm2-135m"), ("sm90", "llama-3.1-8b"), ("sm80", "llama-3.1-8b")]
VARIANT_COUNT = len(ATTENTION_VARIANTS) + sum(split for *_, split, _ in ATTENTION_VARIANTS) + 3 * len(FUSED_VARIANTS)


def signature(kernel, constants: dict, pointers: dict, floats: tuple[str, ...] = ()) -> dict:
    """Argument types: constexprs, the named pointers' types, other pointers int32, floats, ints."""
    types = {}
    for name in kernel.arg_names:
        if name in constants:
            types[name] = "constexpr"
        elif name in pointers:
            types[name] = pointers[name]
        elif name.endswith("_ptr"):
            types[name] = "*i32"
        else:
            types[name] = "fp32" if name in floats else "i32"
    return types


def compile_kernel(kernel, target: str, constants: dict, pointers: dict, floats: tuple[str, ...] = ()):
    constants = dict(constants)
    options = {"num_warps": constants.pop("num_warps")} if "num_warps" in constants else {}
    names = kernel.arg_names
    source = ASTSource(kernel, signature(kernel, constants, pointers, floats),
                       {(names.index(k),): v for k, v in constants.items()})
    return triton.compile(source, target=TARGETS[target], options=options)


def report(compiled, **what) -> None:
    print(json.dumps({**what, "cubin_bytes": len(compiled.asm["cubin"]), "shared_bytes": compiled.metadata.shared}),
          flush=True)


def main() -> None:
    for target, shape, dtype, max_query_len, split, features in ATTENTION_VARIANTS:
        heads, kv_heads, head_dim, _, _ = SHAPES[shape]
        sinks = "sinks" in features
        constants = kernel_constants(heads, kv_heads, head_dim, 16, max_query_len, dtype, split, sinks=sinks,
                                     softcap="softcap" in features, last_key="images" in features)
        pointer = POINTER_TYPES[dtype]
        pointers = dict(q_ptr=pointer, k_cache_ptr=pointer, v_cache_ptr=pointer, out_ptr=pointer, sinks_ptr=pointer,
                        partial_acc_ptr="*fp32", partial_max_ptr="*fp32", partial_sum_ptr="*fp32")
        compiled = compile_kernel(_paged_attention_kernel, target, constants, pointers, floats=("scale", "softcap"))
        report(compiled, kernel="paged_attention", target=target, shape=shape, dtype=str(dtype),
               max_query_len=max_query_len, split=split, features=features)
        if split:
            merge = dict(NUM_HEADS=heads, HEAD_DIM=head_dim, HEAD_DIM_PAD=constants["HEAD_DIM_PAD"], CHUNK=MERGE_CHUNK,
                         HAS_SINKS=sinks)
            pointers = dict(partial_acc_ptr="*fp32", partial_max_ptr="*fp32", partial_sum_ptr="*fp32", out_ptr=pointer,
                            sinks_ptr=pointer)
            compiled = compile_kernel(_merge_partitions_kernel, target, merge, pointers)
            report(compiled, kernel="merge_partitions", target=target, shape=shape)
    bf16 = "*bf16"
    for target, shape in FUSED_VARIANTS:
        heads, kv_heads, head_dim, hidden, width = SHAPES[shape]
        compiled = compile_kernel(_rms_norm_kernel, target, rms_norm_constants(hidden),
                                  dict(x_ptr=bf16, weight_ptr=bf16, out_ptr=bf16), floats=("eps",))
        report(compiled, kernel="rms_norm", target=target, shape=shape)
        compiled = compile_kernel(_silu_and_mul_kernel, target, silu_and_mul_constants(width),
                                  dict(x_ptr=bf16, out_ptr=bf16))
        report(compiled, kernel="silu_and_mul", target=target, shape=shape)
        pointers = dict(qkv_ptr=bf16, cos_ptr=bf16, sin_ptr=bf16, slots_ptr="*i64", k_cache_ptr=bf16, v_cache_ptr=bf16)
        compiled = compile_kernel(_rotary_and_write_kv_kernel, target, rotary_constants(heads, kv_heads, head_dim), pointers)
        report(compiled, kernel="rotary_and_write_kv", target=target, shape=shape)


if __name__ == "__main__":
    sys.exit(main())
