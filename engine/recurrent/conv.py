"""The depthwise causal convolution of a recurrent layer over a packed batch, with each sequence's conv state.

A sequence's conv state is its last kernel - 1 inputs (zeros before its first token), so its outputs
are what transformers' causal_conv1d_fn (a prompt) and causal_conv1d_update (one token) give.
"""

import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN

from engine.recurrent.metadata import RecurrentMetadata
from engine.recurrent.scan import scan


def causal_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str | None,
                conv_state: torch.Tensor, step: RecurrentMetadata) -> torch.Tensor:
    """x [T, channels] -> [T, channels]; weight [channels, 1, kernel] (the module's Conv1d weight)."""
    channels, _, kernel = weight.shape
    act = ACT2FN[activation] if activation is not None else None

    def convolve(padded: torch.Tensor) -> torch.Tensor:  # [n, channels, past + new] -> [n, channels, new]
        out = F.conv1d(padded.to(weight.dtype), weight, bias, groups=channels)
        return (act(out) if act is not None else out).to(x.dtype)

    def prefill(inputs, before):
        new = inputs[0].T[None]  # [1, channels, L]
        past = before[None].to(x.dtype) if before is not None else new.new_zeros(1, channels, kernel - 1)
        padded = torch.cat([past, new], dim=-1)
        return convolve(padded)[0].T, padded[0, :, padded.shape[-1] - (kernel - 1):]

    def decode(inputs, before):
        padded = torch.cat([before.to(x.dtype), inputs[0][:, :, None]], dim=-1)  # [D, channels, kernel]
        return convolve(padded)[:, :, -1], padded[:, :, 1:]

    return scan(step, conv_state, (x,), prefill, decode, torch.empty_like(x))
