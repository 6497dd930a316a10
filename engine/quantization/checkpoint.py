"""Pre-quantized checkpoints: their tensors loaded as stored, then packed for the engine's kernels.

Formats, as their config.json's `quantization_config` names them:
- "fp8" (Qwen3-*-FP8, DeepSeek): `weight` e4m3 and `weight_scale_inv`, one per tensor or per block
  (`weight_block_size`); the real weight is weight * weight_scale_inv.
- "compressed-tensors" (llm-compressor): "float-quantized" (FP8: `weight`, `weight_scale` per tensor,
  channel or block), "int-quantized" / "naive-quantized" (INT8 W8A8 or W8A16: `weight` int8, `weight_scale`
  per channel), "pack-quantized" (W4A16 or W8A16: `weight_packed` int32 holding 32 / bits values along
  the input, offset by 2^(bits-1); `weight_scale` per group or channel; symmetric).
- "gptq": `qweight` int32 [in / 8, out], `qzeros` [groups, out / 8] (stored minus one), `scales`
  [groups, out], `g_idx` [in] (act order: columns reordered so that groups are runs).
- "awq" (GEMM): `qweight` int32 [in, out / 8] and `qzeros` [groups, out / 8] in AWQ's nibble order,
  `scales` [groups, out].
- "mxfp4" (gpt-oss's experts): transformers dequantizes them at load (its MXFP4 kernels come from
  the hub at run time, which the engine does not do): the experts then run in the serving dtype.
Activations are not quantized on CPU (W8A8 runs as W8A16: the same weights, finer activations).

How: a transformers quantizer of our own ("appliance") replaces each quantized nn.Linear, on the meta
device before loading, by a module with the checkpoint's tensor names and shapes, so transformers'
loading (renames, multimodal prefixes, sharded files) fills them as stored; after loading each becomes
an engine.quantization.packed_linear layer.
"""

import re
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import Mxfp4Config
from transformers.quantizers import HfQuantizer
from transformers.quantizers.auto import register_quantization_config, register_quantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from engine.errors import ModelLoadError
from engine.quantization.packed_linear import FP8, INT4_GROUP_SIZES, Fp8Linear, Int4Linear, Int8Linear, PackedLinear

METHOD = "appliance"
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of an AWQ int32 holds column AWQ_ORDER[i] of its eight


@dataclass
class CheckpointScheme:
    """What a checkpoint's quantized linear layers hold, in the engine's words."""

    layout: str  # "fp8", "ct-float", "ct-int8", "ct-packed", "gptq", "awq"
    bits: int = 8
    group_size: int | None = None  # int layouts: inputs per scale; None: one per output channel
    block: tuple[int, int] | None = None  # fp8 layouts: scales per block; None: per tensor or channel
    act_order: bool = False
    ignore: list[str] = field(default_factory=list)  # module names (or "re:" patterns) left in floating point
    source: str = ""  # the checkpoint's own name for it, for operators

    def tensors(self, out_features: int, in_features: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """The checkpoint tensors of one layer of this shape: name -> (shape, dtype)."""
        n, k = out_features, in_features
        groups = -(-k // self.group_size) if self.group_size else 1
        if self.layout == "fp8":
            scale = (-(-n // self.block[0]), -(-k // self.block[1])) if self.block else ()
            return {"weight": ((n, k), FP8), "weight_scale_inv": (scale, torch.float32)}
        if self.layout == "ct-float":
            scale = (-(-n // self.block[0]), -(-k // self.block[1])) if self.block else (n, 1)
            return {"weight": ((n, k), FP8), "weight_scale": (scale, torch.float32)}
        if self.layout == "ct-int8":
            return {"weight": ((n, k), torch.int8), "weight_scale": ((n, 1), torch.float32)}
        if self.layout == "ct-packed":
            return {"weight_packed": ((n, k * self.bits // 32), torch.int32),
                    "weight_scale": ((n, groups), torch.float32), "weight_shape": ((2,), torch.int64)}
        if self.layout == "gptq":
            return {"qweight": ((k // 8, n), torch.int32), "qzeros": ((groups, n // 8), torch.int32),
                    "scales": ((groups, n), torch.float32), "g_idx": ((k,), torch.int32)}
        return {"qweight": ((k, n // 8), torch.int32), "qzeros": ((groups, n // 8), torch.int32),
                "scales": ((groups, n), torch.float32)}


def _refuse(method: str, what: str) -> ModelLoadError:
    return ModelLoadError(f"this checkpoint's quantization ({method}) uses {what}, which the engine does not run; "
                          "use a checkpoint in FP8, compressed-tensors W4A16/W8A16/W8A8/FP8, GPTQ or AWQ (4-bit), "
                          "or the unquantized model with quantization = \"int8\" or \"int4\"")


def parse_scheme(qc: dict) -> CheckpointScheme | None:
    """The scheme of a config.json's quantization_config; None for MXFP4 (transformers dequantizes it)."""
    method = qc.get("quant_method")
    if method == "mxfp4":
        return None
    if method == "fp8":
        block = qc.get("weight_block_size")
        return CheckpointScheme("fp8", block=tuple(block) if block else None, ignore=qc.get("modules_to_not_convert") or [],
                                source="FP8" + (f" block {block[0]}x{block[1]}" if block else " per tensor"))
    if method == "gptq":
        return _gptq_like(qc, "gptq")
    if method == "awq":
        if str(qc.get("version", "gemm")).lower() != "gemm" or not qc.get("zero_point", True):
            raise _refuse("awq", f"version {qc.get('version')!r} without the GEMM layout or zero points")
        return _gptq_like(qc, "awq")
    if method == "compressed-tensors":
        return _compressed_tensors(qc)
    raise ModelLoadError(f"this checkpoint's quantization_config names {method!r}, which the engine does not load; "
                         "it loads fp8, compressed-tensors, gptq, awq and mxfp4 checkpoints")


def _gptq_like(qc: dict, method: str) -> CheckpointScheme:
    bits = qc.get("bits", qc.get("w_bit", 4))
    if bits != 4:
        raise _refuse(method, f"{bits}-bit weights")
    if method == "gptq" and qc.get("checkpoint_format", "gptq") != "gptq":
        raise _refuse(method, f"checkpoint_format {qc.get('checkpoint_format')!r}")
    group = qc.get("group_size", qc.get("q_group_size", 128))
    return CheckpointScheme(method, 4, None if group in (-1, None) else group, act_order=bool(qc.get("desc_act")),
                            ignore=qc.get("modules_to_not_convert") or [],
                            source=f"{method.upper()} int4" + (f" g{group}" if group not in (-1, None) else ""))


def _compressed_tensors(qc: dict) -> CheckpointScheme:
    groups = list((qc.get("config_groups") or {}).values())
    if len(groups) != 1:
        raise _refuse("compressed-tensors", f"{len(groups)} quantization groups (one is supported)")
    weights = groups[0].get("weights") or {}
    fmt = qc.get("format")
    strategy, bits = weights.get("strategy"), weights.get("num_bits")
    ignore = qc.get("ignore") or []
    if not weights.get("symmetric", True):
        raise _refuse("compressed-tensors", "asymmetric weights (zero points)")
    if fmt == "float-quantized" and bits == 8 and weights.get("type") == "float":
        block = weights.get("block_structure") if strategy == "block" else None
        if strategy not in ("tensor", "channel", "block"):
            raise _refuse("compressed-tensors", f"fp8 with the {strategy!r} strategy")
        return CheckpointScheme("ct-float", 8, block=tuple(block) if block else None, ignore=ignore,
                                source=f"compressed-tensors FP8 {strategy}")
    if fmt in ("int-quantized", "naive-quantized") and bits == 8 and strategy == "channel":
        activations = "W8A8" if groups[0].get("input_activations") else "W8A16"
        return CheckpointScheme("ct-int8", 8, ignore=ignore, source=f"compressed-tensors {activations} int8")
    if fmt == "pack-quantized" and bits in (4, 8) and strategy in ("group", "channel"):
        group = weights.get("group_size") if strategy == "group" else None
        return CheckpointScheme("ct-packed", bits, group, act_order=bool(weights.get("actorder")), ignore=ignore,
                                source=f"compressed-tensors W{bits}A16" + (f" g{group}" if group else ""))
    raise _refuse("compressed-tensors", f"format {fmt!r} with {bits}-bit {weights.get('type')} weights, "
                                        f"strategy {strategy!r}")


def _ignored(name: str, patterns: list[str]) -> bool:
    """Whether a module stays in floating point: its name, its last parts, or a "re:" pattern in the list."""
    return any(re.match(p[3:], name) if p.startswith("re:") else name == p or name.endswith("." + p) for p in patterns)


class CheckpointLinear(nn.Module):
    """A quantized linear layer as the checkpoint stores it: filled by transformers' loading, then packed."""

    def __init__(self, linear: nn.Linear, scheme: CheckpointScheme):
        super().__init__()
        self.scheme = scheme
        self.in_features, self.out_features = linear.in_features, linear.out_features
        for name, (shape, dtype) in scheme.tensors(self.out_features, self.in_features).items():
            self.register_buffer(name, torch.empty(shape, dtype=dtype, device="meta"))
        self.bias = linear.bias

    def packed(self) -> PackedLinear:
        bias = None if self.bias is None else self.bias.detach()
        layout = self.scheme.layout
        if layout == "fp8":
            return Fp8Linear(self.weight, self.weight_scale_inv, self.scheme.block, bias)
        if layout == "ct-float":
            return Fp8Linear(self.weight, self.weight_scale, self.scheme.block, bias)
        if layout == "ct-int8":
            return Int8Linear(self.weight, self.weight_scale.reshape(-1), bias)
        if layout == "ct-packed":
            return self._from_ct_packed(bias)
        return self._from_gptq_like(bias)

    def _groups(self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor):
        """A per-channel or odd-sized grouping regrouped to a size the int4 kernels take (repeating the scales)."""
        group = self.in_features // scale.shape[1]
        target = next((g for g in INT4_GROUP_SIZES if self.in_features % g == 0), None)
        if group == target or target is None or group % target:
            return q, scale, zero
        return q, scale.repeat_interleave(group // target, 1), zero.repeat_interleave(group // target, 1)

    def _from_ct_packed(self, bias) -> PackedLinear:
        bits = self.scheme.bits
        per_word = 32 // bits
        shifts = torch.arange(per_word, dtype=torch.int32, device=self.weight_packed.device) * bits
        q = (self.weight_packed[:, :, None] >> shifts) & ((1 << bits) - 1)  # low bits first
        q = q.reshape(self.out_features, -1)[:, : self.in_features]
        scale = self.weight_scale.to(torch.float32)
        if bits == 8:
            if scale.shape[1] != 1:
                raise _refuse("compressed-tensors", "grouped 8-bit weights")
            return Int8Linear((q - 128).to(torch.int8), scale.reshape(-1), bias)
        q, scale, zero = self._groups(q, scale, torch.zeros_like(scale))
        return Int4Linear(q, scale, zero, bias)  # stored q + 8: w = (stored - 8) * scale

    def _from_gptq_like(self, bias) -> PackedLinear:
        shifts = torch.arange(8, dtype=torch.int32, device=self.qweight.device) * 4
        scale = self.scales.to(torch.float32)  # [groups, out]
        if self.scheme.layout == "gptq":
            q = ((self.qweight[:, None, :] >> shifts[None, :, None]) & 15).reshape(self.in_features, -1)  # [in, out]
            zeros = ((self.qzeros[:, :, None] >> shifts) & 15).reshape(scale.shape[0], -1) + 1  # v1: stored minus one
        else:
            order = torch.tensor(AWQ_ORDER, device=self.qweight.device)
            q = torch.empty(self.in_features, self.out_features, dtype=torch.int32, device=self.qweight.device)
            q.view(self.in_features, -1, 8)[:, :, order] = (self.qweight[:, :, None] >> shifts) & 15
            zeros = torch.empty(scale.shape, dtype=torch.int32, device=self.qweight.device)
            zeros.view(scale.shape[0], -1, 8)[:, :, order] = (self.qzeros[:, :, None] >> shifts) & 15
        group = self.in_features // scale.shape[0]
        input_order = None
        if self.scheme.layout == "gptq":
            g_idx = self.g_idx.long()
            if not torch.equal(g_idx, torch.arange(self.in_features, device=g_idx.device) // group):
                input_order = torch.sort(g_idx, stable=True).indices  # groups become runs of columns
                q = q[input_order]
        # (q - z) * s = (q - 8) * s + (8 - z) * s
        zero = (8 - zeros).to(torch.float32) * scale
        q, scale, zero = self._groups(q.T.contiguous(), scale.T.contiguous(), zero.T.contiguous())
        return Int4Linear(q, scale, zero, bias, input_order)


class EngineQuantizationConfig(QuantizationConfigMixin):
    """The checkpoint's quantization_config, read by the engine (transformers carries it to the quantizer)."""

    def __init__(self, original: dict | None = None, **kwargs):
        self.quant_method = METHOD
        self.original = original or {}

    def to_dict(self) -> dict:
        return {"quant_method": METHOD, "original": self.original}


class EngineQuantizer(HfQuantizer):
    requires_calibration = True  # loads pre-quantized weights only

    def __init__(self, quantization_config: EngineQuantizationConfig, **kwargs):
        super().__init__(quantization_config, **kwargs)
        self.scheme = parse_scheme(quantization_config.original)

    def _process_model_before_weight_loading(self, model, **kwargs):
        head = model.get_output_embeddings()
        for name, module in list(model.named_modules()):
            for child_name, child in list(module.named_children()):
                full = f"{name}.{child_name}" if name else child_name
                if type(child) is nn.Linear and child is not head and not _ignored(full, self.scheme.ignore):
                    setattr(module, child_name, CheckpointLinear(child, self.scheme))

    def get_new_dtype(self, converter, param, dtype):
        # The quantized tensors (int, fp8) keep their type; scales and other floats take the model's.
        kind = param.get_dtype() if hasattr(param, "get_dtype") else str(param.dtype)
        return dtype if kind in ("F32", "F16", "BF16") or kind in ("torch.float32", "torch.float16", "torch.bfloat16") \
            else None

    def _process_model_after_weight_loading(self, model, **kwargs):
        with torch.no_grad():
            for module in list(model.modules()):
                for child_name, child in list(module.named_children()):
                    if isinstance(child, CheckpointLinear):
                        setattr(module, child_name, child.packed())
        return model

    def is_serializable(self):
        return False

    @property
    def is_trainable(self) -> bool:
        return False


register_quantization_config(METHOD)(EngineQuantizationConfig)
register_quantizer(METHOD)(EngineQuantizer)


def prepare(config) -> tuple[dict, str | None]:
    """Before from_pretrained: keyword arguments that make transformers load this config's checkpoint
    through the engine's quantizer, and what operators are told the weights came as (None: not quantized)."""
    qc = getattr(config, "quantization_config", None)
    if qc is None:
        return {}, None
    qc = qc if isinstance(qc, dict) else qc.to_dict()
    scheme = parse_scheme(qc)
    if scheme is None:  # MXFP4: transformers' own quantizer, dequantizing
        return {"quantization_config": Mxfp4Config(dequantize=True)}, "MXFP4 (dequantized at load)"
    engine_qc = {"quant_method": METHOD, "original": qc}
    config.quantization_config = engine_qc
    config.get_text_config().quantization_config = engine_qc  # what a multimodal checkpoint's language model loads
    return {"config": config}, scheme.source
