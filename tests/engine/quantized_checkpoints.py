"""Tiny pre-quantized checkpoints written by hand to each format's published layout, and their twins.

Each writer quantizes the linear layers of a float model (not the LM head), saves them as the format
stores them (tensor names, shapes, packing, config.json's quantization_config) and returns the
dequantized twin: the same model with each linear's weight replaced by what the stored values mean
by the format's own formula, computed here independently of the engine's unpacking.

Formats (their specifications): FP8 block-wise and per-tensor (DeepSeek-V3 / Qwen3-FP8:
`weight_scale_inv` multiplies), compressed-tensors float-quantized (FP8 per channel), int-quantized
(INT8 W8A8) and pack-quantized (W4A16: eight 4-bit values per int32 along the input, low bits first,
offset by 8), GPTQ v1 (`qweight` [in/8, out], `qzeros` stored minus one, `g_idx`), AWQ GEMM (nibble
order 0 2 4 6 1 3 5 7).
"""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

FP8 = torch.float8_e4m3fn
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def linears(model: nn.Module) -> dict[str, nn.Linear]:
    head = model.get_output_embeddings()
    return {name: m for name, m in model.named_modules() if type(m) is nn.Linear and m is not head}


def _pack_along_last(values: torch.Tensor, bits: int) -> torch.Tensor:
    """[..., n] unsigned values -> [..., n * bits / 32] int32, the first value in the lowest bits."""
    per_word = 32 // bits
    v = values.to(torch.int64).reshape(*values.shape[:-1], -1, per_word)
    words = sum(v[..., i] << (bits * i) for i in range(per_word))
    return (words - ((words >> 31) << 32)).to(torch.int32)  # as int32, two's complement


def _asym_int4(w: torch.Tensor, group: int):
    """q [out, in] 0..15, integer zeros [out, groups], scales [out, groups]: w ~ (q - z) * s."""
    g = w.view(w.shape[0], -1, group)
    lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)
    scale = ((hi - lo) / 15).clamp(min=1e-8)
    zero = (-lo / scale).round().clamp(0, 15)
    q = (g / scale[..., None] + zero[..., None]).round().clamp(0, 15)
    return q.view_as(w).to(torch.int32), zero.to(torch.int32), scale


def _write(model: nn.Module, path: Path, tensors: dict, quantization_config: dict) -> None:
    state, seen = {}, set()
    for k, v in model.state_dict().items():  # a tied LM head is saved once, as its embeddings
        if (k.rsplit(".", 1)[0] not in linears(model) or k.endswith(".bias")) and v.data_ptr() not in seen:
            state[k] = v.contiguous()
            seen.add(v.data_ptr())
    state.update({k: v.contiguous() for k, v in tensors.items()})
    path.mkdir(parents=True, exist_ok=True)
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    config = model.config.to_dict()
    config["quantization_config"] = quantization_config
    config["architectures"] = [type(model).__name__]
    (path / "config.json").write_text(json.dumps(config))


def _twin(model: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    with torch.no_grad():
        for name, linear in linears(model).items():
            linear.weight.copy_(weights[name])
    return model


def fp8(model: nn.Module, path: Path, block: tuple[int, int] | None) -> nn.Module:
    tensors, twin = {}, {}
    for name, linear in linears(model).items():
        w = linear.weight.detach()
        if block is None:
            scale = w.abs().amax() / 448
            full = scale
        else:
            b0, b1 = block
            blocks = w.view(w.shape[0] // b0, b0, w.shape[1] // b1, b1)
            scale = blocks.abs().amax(dim=(1, 3)) / 448
            full = scale.repeat_interleave(b0, 0).repeat_interleave(b1, 1)
        q = (w / full).to(FP8)
        tensors[f"{name}.weight"], tensors[f"{name}.weight_scale_inv"] = q, scale.to(torch.float32)
        twin[name] = q.to(torch.float32) * full
    qc = {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3"}
    if block is not None:
        qc["weight_block_size"] = list(block)
    _write(model, path, tensors, qc)
    return _twin(model, twin)


def _ct_config(fmt: str, weights: dict, activations: dict | None = None) -> dict:
    return {"quant_method": "compressed-tensors", "format": fmt, "ignore": ["lm_head"],
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights,
                                          "input_activations": activations}}}


def _ct_per_channel(model: nn.Module, path: Path, fmt: str, number_type: str, largest: float, quantize) -> nn.Module:
    """compressed-tensors' 8-bit per-channel weights (activations dynamic per token): a scale per output channel
    mapping its largest magnitude to `largest`, `quantize` turning the scaled weight into the stored values."""
    tensors, twin = {}, {}
    for name, linear in linears(model).items():
        w = linear.weight.detach()
        scale = w.abs().amax(1, keepdim=True) / largest
        q = quantize(w / scale)
        tensors[f"{name}.weight"], tensors[f"{name}.weight_scale"] = q, scale
        twin[name] = q.to(torch.float32) * scale
    weights = {"num_bits": 8, "type": number_type, "strategy": "channel", "symmetric": True, "dynamic": False}
    _write(model, path, tensors, _ct_config(fmt, weights,
                                            {"num_bits": 8, "type": number_type, "strategy": "token", "dynamic": True}))
    return _twin(model, twin)


def ct_fp8(model: nn.Module, path: Path) -> nn.Module:
    return _ct_per_channel(model, path, "float-quantized", "float", 448, lambda x: x.to(FP8))


def ct_int8(model: nn.Module, path: Path) -> nn.Module:
    return _ct_per_channel(model, path, "int-quantized", "int", 127,
                           lambda x: x.round().clamp(-128, 127).to(torch.int8))


def ct_w4a16(model: nn.Module, path: Path, group: int) -> nn.Module:
    tensors, twin = {}, {}
    for name, linear in linears(model).items():
        w = linear.weight.detach()
        g = w.view(w.shape[0], -1, group)
        scale = g.abs().amax(-1) / 7
        q = (g / scale[..., None]).round().clamp(-8, 7)
        tensors[f"{name}.weight_packed"] = _pack_along_last((q + 8).view_as(w), 4)
        tensors[f"{name}.weight_scale"] = scale
        tensors[f"{name}.weight_shape"] = torch.tensor(list(w.shape), dtype=torch.int64)
        twin[name] = (q * scale[..., None]).view_as(w)
    weights = {"num_bits": 4, "type": "int", "strategy": "group", "group_size": group, "symmetric": True,
               "dynamic": False}
    _write(model, path, tensors, _ct_config("pack-quantized", weights))
    return _twin(model, twin)


def gptq(model: nn.Module, path: Path, group: int, act_order: bool = False) -> nn.Module:
    tensors, twin = {}, {}
    for name, linear in linears(model).items():
        w = linear.weight.detach()  # [out, in]
        n, k = w.shape
        # act order: the columns' groups assigned by a permutation (as GPTQ's sorted Hessian diagonal does)
        perm = torch.randperm(k, generator=torch.Generator().manual_seed(k)) if act_order else torch.arange(k)
        q_perm, zero, scale = _asym_int4(w[:, perm], group)
        q = torch.empty_like(q_perm)
        q[:, perm] = q_perm
        g_idx = torch.empty(k, dtype=torch.int32)
        g_idx[perm] = torch.arange(k, dtype=torch.int32) // group
        tensors[f"{name}.qweight"] = _gptq_qweight(q)
        tensors[f"{name}.qzeros"] = _pack_along_last((zero - 1).T.contiguous(), 4)  # [groups, out / 8], minus one
        tensors[f"{name}.scales"] = scale.T.contiguous().to(torch.float16)
        tensors[f"{name}.g_idx"] = g_idx
        s = scale.T.to(torch.float16).to(torch.float32)[g_idx.long()].T  # [out, in] each column's group
        z = zero.T.to(torch.float32)[g_idx.long()].T
        twin[name] = (q.to(torch.float32) - z) * s
    _write(model, path, tensors, {"quant_method": "gptq", "bits": 4, "group_size": group, "desc_act": act_order,
                                  "sym": False, "checkpoint_format": "gptq"})
    return _twin(model, twin)


def _gptq_qweight(q: torch.Tensor) -> torch.Tensor:
    """q [out, in] -> [in / 8, out] int32: eight consecutive inputs per word, the first in the lowest bits."""
    n, k = q.shape
    return _pack_along_last(q.T.reshape(k // 8, 8, n).permute(0, 2, 1), 4).reshape(k // 8, n)


def awq(model: nn.Module, path: Path, group: int) -> nn.Module:
    tensors, twin = {}, {}
    for name, linear in linears(model).items():
        w = linear.weight.detach()
        n, k = w.shape
        q, zero, scale = _asym_int4(w, group)  # [out, in], [out, groups]
        order = list(AWQ_ORDER)
        tensors[f"{name}.qweight"] = _pack_along_last(q.T.reshape(k, n // 8, 8)[:, :, order].reshape(k, n), 4)
        tensors[f"{name}.qzeros"] = _pack_along_last(zero.T.reshape(-1, n // 8, 8)[:, :, order].reshape(-1, n), 4)
        tensors[f"{name}.scales"] = scale.T.contiguous().to(torch.float16)
        s = scale.to(torch.float16).to(torch.float32).repeat_interleave(group, 1)
        twin[name] = (q.to(torch.float32) - zero.repeat_interleave(group, 1)) * s
    _write(model, path, tensors, {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True,
                                  "version": "gemm"})
    return _twin(model, twin)


WRITERS = {
    "fp8-block": lambda m, p: fp8(m, p, (32, 32)),
    "fp8-tensor": lambda m, p: fp8(m, p, None),
    "ct-fp8": ct_fp8,
    "ct-int8": ct_int8,
    "ct-w4a16": lambda m, p: ct_w4a16(m, p, 32),
    "gptq": lambda m, p: gptq(m, p, 32),
    "gptq-act-order": lambda m, p: gptq(m, p, 32, act_order=True),
    "awq": lambda m, p: awq(m, p, 32),
}
