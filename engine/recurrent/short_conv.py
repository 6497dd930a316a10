"""LFM2's short convolution on a packed batch: a gated depthwise causal convolution, its only state the conv state."""

import torch

from engine.recurrent.conv import causal_conv
from engine.recurrent.forward import EngineForward
from engine.recurrent.metadata import RecurrentMetadata
from engine.state_spec import SHORT_CONV, RecurrentSpec


class ShortConvForward(EngineForward):
    MODULES = ("Lfm2ShortConv",)

    @staticmethod
    def spec(module) -> RecurrentSpec:
        return RecurrentSpec(SHORT_CONV, module.conv.in_channels, module.conv_kernel_size)

    def forward(self, hidden_states: torch.Tensor, step: RecurrentMetadata) -> torch.Tensor:
        m = self.module
        conv_state, _ = self.states(step)
        b, c, x = m.in_proj(hidden_states)[0].chunk(3, dim=-1)
        y = c * causal_conv(b * x, m.conv.weight, m.conv.bias, None, conv_state, step)
        return m.out_proj(y[None])
