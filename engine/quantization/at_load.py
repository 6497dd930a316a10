"""Quantize a loaded model's linear layers: `quantization = "int8" | "int4" | "fp8"`.

The quantization math is torchao's (pinned): int8 symmetric per output channel, int4 asymmetric in
groups of 32 with tinygemm's zero in the floating domain; fp8 per output channel. Groups of 32, not
the usual 128: on the default model groups of 64 measured 2.5x float32's perplexity, groups of 32
+0.3 % (docs/BENCHMARKS.md), for 5 bits a weight instead of 4.25. The result is packed for the engine's kernels (engine.quantization.packed_linear).

What is quantized: every nn.Linear of the decoder layers. Kept in floating point: the embeddings,
the LM head (often tied to them), and mixture-of-experts routers (few weights, and top-k choices are
sensitive to them). Experts built on transformers' experts interface hold their weights as 3-D
parameters, not nn.Linear: they stay in floating point (said in the model's weight summary).
"""

import logging

import torch
from torch import nn

from engine.errors import ModelLoadError
from engine.quantization.packed_linear import (FP8, FP8_MAX, Fp8Linear, Int4Linear, Int8Linear,
                                               PackedLinear, cuda_has_fp8)

SCHEMES = ("int8", "int4", "fp8")
ROUTER_NAMES = {"gate", "router"}

log = logging.getLogger(__name__)


def _torchao():
    """torchao's quantization primitives; its CUDA extensions log at import when absent (on CPU), harmless."""
    logging.getLogger("torchao").setLevel(logging.ERROR)
    from torchao.quantization import quant_primitives, utils

    return quant_primitives, utils


def quantizable_linears(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, layer) of each nn.Linear to quantize: the decoder's, not the LM head nor routers."""
    head = model.get_output_embeddings()
    found = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is not nn.Linear or child is head:
                continue
            if name in ROUTER_NAMES and hasattr(parent, "experts"):
                continue
            found.append((parent, name, child))
    return found


def int8_per_channel(weight: torch.Tensor, bias: torch.Tensor | None = None) -> Int8Linear:
    primitives, _ = _torchao()
    w = weight.detach().to(torch.float32)
    scale, zero = primitives.choose_qparams_affine(w, primitives.MappingType.SYMMETRIC, (1, w.shape[1]), torch.int8,
                                                   scale_dtype=torch.float32)
    q = primitives.quantize_affine(w, (1, w.shape[1]), scale, zero, torch.int8)
    return Int8Linear(q, scale.reshape(-1), bias)


INT4_GROUP_SIZE = 32


def int4_grouped(weight: torch.Tensor, bias: torch.Tensor | None = None) -> Int4Linear:
    _, utils = _torchao()
    w = weight.detach().to(torch.float32)
    q, scales_and_zeros = utils.groupwise_affine_quantize_tensor(w, 4, INT4_GROUP_SIZE, torch.float32)
    scale, zero = scales_and_zeros.transpose(0, 1).unbind(-1)  # [in / group, out, 2] -> [out, in / group] each
    return Int4Linear(q, scale, zero, bias)


def fp8_per_channel(weight: torch.Tensor, bias: torch.Tensor | None = None) -> Fp8Linear:
    w = weight.detach().to(torch.float32)
    scale = (w.abs().amax(1) / FP8_MAX).clamp(min=1e-12)
    return Fp8Linear((w / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale, None, bias)


def check_scheme(scheme: str, device: str) -> None:
    if scheme not in SCHEMES:
        raise ModelLoadError(f"quantization must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    if scheme == "fp8" and not cuda_has_fp8(torch.device(device)):
        raise ModelLoadError(
            f"quantization \"fp8\" needs a GPU with fp8 matrix units (compute capability 8.9 or newer: Ada, "
            f"Hopper, Blackwell); this model runs on {device}. Use \"int8\" or \"int4\" there")


@torch.no_grad()
def quantize_model(model: nn.Module, scheme: str, device: str) -> int:
    """Replace the model's quantizable linear layers with packed ones, in place; how many were replaced."""
    check_scheme(scheme, device)
    replaced = 0
    for parent, name, linear in quantizable_linears(model):
        packed = pack_linear(linear.weight, linear.bias, scheme)
        if packed is None:
            log.info("%s stays in floating point: its %d inputs are not groups of %d", name, linear.in_features,
                     INT4_GROUP_SIZE)
            continue
        setattr(parent, name, packed)
        replaced += 1
    if device == "cpu":
        release_checkpoint_mapping(model)
    return replaced


def release_checkpoint_mapping(model: nn.Module) -> None:
    """Copy the parameters kept in floating point into the process's own memory. On CPU a loaded checkpoint's
    tensors are views of its memory-mapped file; while one of them (the embeddings, a norm) still reads from it,
    the whole mapping stays, and the process's resident memory keeps counting the file's pages of the weights just
    packed (measured on the default model: int8 at load 1,342 MiB resident, float32 1,179; with the copies 903)."""
    for parameter in {id(p): p for p in model.parameters()}.values():  # a tied parameter once
        parameter.data = parameter.data.clone()


def pack_linear(weight: torch.Tensor, bias: torch.Tensor | None, scheme: str) -> PackedLinear | None:
    bias = None if bias is None else bias.detach()
    if scheme == "int8":
        return int8_per_channel(weight, bias)
    if scheme == "int4":
        return int4_grouped(weight, bias) if weight.shape[1] % INT4_GROUP_SIZE == 0 else None
    return fp8_per_channel(weight, bias)
