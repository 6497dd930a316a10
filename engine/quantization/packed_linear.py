"""Linear layers whose weights stay packed in memory, and the kernels that multiply by them.

Three packings, whatever the checkpoint or the quantizer that produced them:
- int8, one scale per output channel (weight-only: activations stay in floating point);
- int4 in groups along the input, each group a scale and a zero in the floating domain
  (w = (q - 8) * scale + zero, the layout of torch's int4 matmuls: tinygemm on CUDA, its CPU twin);
- fp8 (e4m3), with one scale for the tensor, one per output channel, or one per block of the matrix.

Kernels: torch's own. On CPU `_weight_int8pack_mm` and `_weight_int4pack_mm_for_cpu` with bfloat16
activations (their float32 paths measured ten times slower on this CPU; benchmarks/quantized_matmul.py);
fp8 is widened per call (torch's CPU `_scaled_mm` measured slower still). On CUDA int4 runs tinygemm
(`_weight_int4pack_mm`), fp8 `_scaled_mm` with per-token activation scales on GPUs with fp8 (compute
capability 8.9 and up). Where no kernel takes a shape, the layer widens its weight per call: slower,
the same numbers, the memory still packed.
"""

import torch
import torch.nn.functional as F
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max
INT4_GROUP_SIZES = (128, 64, 32)  # tinygemm's (and the CPU kernel's) group sizes, largest first
TINYGEMM_INNER_K_TILES = (8, 4, 2)


def cuda_has_fp8(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


class PackedLinear(nn.Module):
    """y = x W^T + b with W kept packed; `dequantized()` gives W in floating point (tests compare against it)."""

    packing: str  # "int8", "int4", "fp8"

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        raise NotImplementedError

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x [M, in] -> [M, out], without the bias."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.matmul(x.reshape(-1, self.in_features)).reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def weight_bytes(self) -> int:
        """Bytes the weight (and bias) take in memory, packed."""
        return sum(t.nbytes for t in self.buffers()) + sum(p.nbytes for p in self.parameters())

    def describe(self) -> str:
        return self.packing

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packing={self.describe()}"


class Int8Linear(PackedLinear):
    packing = "int8"

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None):
        """q int8 [out, in]; scale [out]: w = q * scale."""
        super().__init__(q.shape[1], q.shape[0], bias)
        self.register_buffer("q", q.to(torch.int8).contiguous())
        self.register_buffer("scale", scale.reshape(-1).to(torch.bfloat16 if q.device.type == "cpu" else torch.float32))

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        return (self.q.to(torch.float32) * self.scale.to(torch.float32)[:, None]).to(dtype)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            return torch._weight_int8pack_mm(x.to(torch.bfloat16), self.q, self.scale).to(x.dtype)
        return F.linear(x, self.q.to(x.dtype)) * self.scale.to(x.dtype)


class Int4Linear(PackedLinear):
    packing = "int4"

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bias: torch.Tensor | None = None,
                 input_order: torch.Tensor | None = None):
        """q [out, in] values 0..15; scale, zero [out, in / group]: w = (q - 8) * scale + zero.
        input_order: a permutation of the inputs that makes each group a run of columns (GPTQ's act order)."""
        out_features, in_features = q.shape
        super().__init__(in_features, out_features, bias)
        self.group_size = in_features // scale.shape[1]
        device = q.device
        # [in / group, out, 2] in the activations' dtype: what both kernels take.
        scales_and_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()
        q = q.to(torch.int32).contiguous()
        self.kernel = _int4_kernel(device, in_features, out_features, self.group_size)
        if self.kernel == "cpu":
            self.register_buffer("packed", torch._convert_weight_to_int4pack_for_cpu(q, 1))
            self.register_buffer("scales_and_zeros", scales_and_zeros.to(torch.bfloat16))
        elif self.kernel == "tinygemm":
            pairs = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
            tiles = next(t for t in TINYGEMM_INNER_K_TILES if in_features % (t * 16) == 0)
            self.register_buffer("packed", torch._convert_weight_to_int4pack(pairs, tiles))
            self.register_buffer("scales_and_zeros", scales_and_zeros.to(torch.bfloat16))
        else:  # two values a byte, widened per call
            self.register_buffer("packed", (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8))
            self.register_buffer("scales_and_zeros", scales_and_zeros.to(torch.float32))
        self.register_buffer("input_order", input_order)

    def _values(self) -> torch.Tensor:
        """q [out, in] from whichever packing holds it."""
        eye = torch.eye(self.in_features, dtype=torch.bfloat16, device=self.packed.device)
        if self.kernel == "widened":
            return torch.stack([self.packed >> 4, self.packed & 15], dim=-1).reshape(self.out_features, -1).to(torch.int32)
        # The kernels multiply by the packed matrix: with q = 8 everywhere but one column they give it back.
        ones = torch.ones_like(self.scales_and_zeros)
        ones[..., 1] = 0  # scale 1, zero 0: out = q - 8
        mm = torch._weight_int4pack_mm_for_cpu if self.kernel == "cpu" else torch._weight_int4pack_mm
        return (mm(eye, self.packed, self.group_size, ones).float() + 8).round().to(torch.int32).T.contiguous()

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        q = self._values().to(torch.float32).view(self.out_features, -1, self.group_size)
        scale, zero = self.scales_and_zeros.to(torch.float32).transpose(0, 1).unbind(-1)
        w = ((q - 8) * scale[..., None] + zero[..., None]).view(self.out_features, self.in_features)
        if self.input_order is not None:  # back to the checkpoint's column order
            w = torch.empty_like(w).index_copy_(1, self.input_order, w)
        return w.to(dtype)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_order is not None:
            x = x.index_select(-1, self.input_order)
        if self.kernel == "cpu":
            return torch._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), self.packed, self.group_size,
                                                     self.scales_and_zeros).to(x.dtype)
        if self.kernel == "tinygemm":
            return torch._weight_int4pack_mm(x.to(torch.bfloat16), self.packed, self.group_size,
                                             self.scales_and_zeros).to(x.dtype)
        w = self.dequantized(x.dtype)
        return F.linear(x if self.input_order is None else x.index_select(-1, _inverse(self.input_order)), w)

    def describe(self) -> str:
        return f"int4 g{self.group_size}"


def _inverse(order: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(order).index_copy_(0, order, torch.arange(len(order), device=order.device))


def _int4_kernel(device: torch.device, in_features: int, out_features: int, group_size: int) -> str:
    if group_size not in INT4_GROUP_SIZES or in_features % 2:
        return "widened"
    if device.type == "cpu":
        return "cpu"
    if device.type == "cuda" and out_features % 8 == 0 and in_features % 32 == 0:
        return "tinygemm"
    return "widened"


class Fp8Linear(PackedLinear):
    packing = "fp8"

    def __init__(self, w: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] | None = None,
                 bias: torch.Tensor | None = None):
        """w float8_e4m3fn [out, in]; scale: one for the tensor, [out] per channel, or [out / b0, in / b1]
        for blocks of `block` (rounded up at the edges): w_real = w * scale."""
        super().__init__(w.shape[1], w.shape[0], bias)
        self.block = block
        self.register_buffer("w", w.to(FP8).contiguous())
        if block is None:
            scale = scale.reshape(-1).to(torch.float32)
            if scale.numel() == 1:
                scale = scale.expand(w.shape[0]).contiguous()
        self.register_buffer("scale", scale.to(torch.float32))
        self.scaled_mm = block is None and cuda_has_fp8(w.device) and self.in_features % 16 == 0 \
            and self.out_features % 16 == 0

    def _scale_per_element(self) -> torch.Tensor:
        if self.block is None:
            return self.scale[:, None]
        rows, cols = self.block
        full = self.scale.repeat_interleave(rows, 0).repeat_interleave(cols, 1)
        return full[: self.out_features, : self.in_features]

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        return (self.w.to(torch.float32) * self._scale_per_element()).to(dtype)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        if self.scaled_mm:
            # Per-token activation scales, per-channel weight scales: fp8 x fp8 on the tensor cores.
            x_scale = (x.abs().amax(-1, keepdim=True).to(torch.float32) / FP8_MAX).clamp(min=1e-12)
            xq = (x / x_scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
            return torch._scaled_mm(xq, self.w.t(), scale_a=x_scale, scale_b=self.scale[None],
                                    out_dtype=x.dtype)
        return F.linear(x, self.dequantized(x.dtype))

    def describe(self) -> str:
        if self.block is not None:
            return f"fp8 block {self.block[0]}x{self.block[1]}"
        return "fp8"


def packed_linears(model: nn.Module) -> list[PackedLinear]:
    return [m for m in model.modules() if isinstance(m, PackedLinear)]
