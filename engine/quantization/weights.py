"""What the loader asks of quantization once a model is loaded: pack its weights as configured, and
say what they are (the packing, where it came from, the bytes in memory) for operators."""

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engine.errors import ModelLoadError
from engine.host_memory import release_freed_heap
from engine.quantization.at_load import quantize_model
from engine.quantization.gguf import keep_gguf_packing
from engine.quantization.packed_linear import packed_linears


@dataclass(frozen=True)
class WeightFormat:
    packing: str  # "float32"; "int4 g64 + float32"; "int8 + int4 g32 + float32" (what is left in floating point)
    source: str  # "checkpoint", "quantized at load (torchao int4)", "GGUF Q4_1 x 180, Q8_0 x 30", ...
    bytes: int  # parameters and buffers in memory

    def to_dict(self) -> dict:
        return {"weights": self.packing, "weights_source": self.source, "weight_bytes": self.bytes}


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers, tied ones once."""
    seen = {}
    for t in list(model.parameters()) + list(model.buffers()):
        seen[(t.untyped_storage().data_ptr(), t.nbytes)] = t.nbytes if t.device.type != "meta" else 0
    return sum(seen.values())


def describe(model: nn.Module, dtype: torch.dtype) -> str:
    packings = Counter(m.describe() for m in packed_linears(model))
    return " + ".join(sorted(packings) + [str(dtype).removeprefix("torch.")])


def pack_weights(model: nn.Module, quantization: str | None, device: str, dtype: torch.dtype,
                 gguf: Path | None = None, stored: str | None = None) -> WeightFormat:
    """Quantize at load, keep a GGUF's packing, or leave the checkpoint's (packed already, if pre-quantized)."""
    if quantization is not None:
        if stored is not None:
            raise ModelLoadError(f"this checkpoint is quantized already ({stored}); unset quantization to load it "
                                 "as it is, or load the unquantized model")
        quantize_model(model, quantization, device)
        source = f"quantized at load ({quantization}, torchao)"
    elif gguf is not None:
        met = keep_gguf_packing(model, gguf)
        source = "GGUF " + ", ".join(f"{kind} x {n}" for kind, n in met.most_common())
    else:
        source = stored or "checkpoint"
    if device == "cpu" and (quantization is not None or gguf is not None):
        release_freed_heap()  # the float weights just packed
    return WeightFormat(describe(model, dtype), source, model_bytes(model))
