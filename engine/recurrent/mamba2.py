"""Mamba-2 mixers (Nemotron-H, Granite 4.0-H, Falcon-H1) on a packed batch.

One projection gives the gate, the convolution's input (x, B, C) and dt; each sequence's state (heads x
head dim x state size) is advanced by the selective scan: transformers' chunked form (mamba2_chunk_scan)
for prefills, its one-step form (mamba2_selective_state_update) for decodes, as generate() runs them.
Falcon-H1 scales the input and the projection (muP) and may gate without a norm.
"""

import torch
import torch.nn.functional as F

from engine.recurrent.conv import causal_conv
from engine.recurrent.forward import EngineForward
from engine.recurrent.metadata import RecurrentMetadata
from engine.recurrent.scan import scan
from engine.state_spec import MAMBA2, RecurrentSpec


class Mamba2Forward(EngineForward):
    MODULES = ("NemotronHMamba2Mixer", "GraniteMoeHybridMambaLayer", "FalconH1Mixer")

    @staticmethod
    def spec(module) -> RecurrentSpec:
        return RecurrentSpec(MAMBA2, module.conv_dim, module.conv_kernel_size,
                             (module.num_heads, module.head_dim, module.ssm_state_size))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        if hasattr(m, "mup_vector"):  # Falcon-H1
            return (m.in_proj(x * m.ssm_in_multiplier) * m.mup_vector)[0]
        return m.in_proj(x)[0]

    def gated(self, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        m = self.module
        if getattr(m, "mamba_rms_norm", True):  # Falcon-H1 may leave the norm out
            return m.norm(y, gate)
        return y * F.silu(gate)

    def forward(self, hidden_states: torch.Tensor, step: RecurrentMetadata) -> torch.Tensor:
        m = self.module
        heads, head_dim, state_size, groups = m.num_heads, m.head_dim, m.ssm_state_size, m.n_groups
        conv_state, ssm_state = self.states(step)
        gate, xbc, dt = self.project(hidden_states).split([m.intermediate_size, m.conv_dim, m.num_heads], dim=-1)
        xbc = causal_conv(xbc, m.conv1d.weight, m.conv1d.bias, m.activation, conv_state, step)
        x, b, c = torch.split(xbc, [m.intermediate_size, groups * state_size, groups * state_size], dim=-1)
        a = -torch.exp(m.A_log.float())
        chunked, one_step = self.reference("mamba2_chunk_scan"), self.reference("mamba2_selective_state_update")

        def prefill(inputs, before):
            x, dt, b, c = inputs
            n = len(x)
            out, after = chunked(x.view(1, n, heads, head_dim), dt[None], a, b.view(1, n, groups, state_size),
                                 c.view(1, n, groups, state_size), chunk_size=m.chunk_size, D=m.D, dt_bias=m.dt_bias,
                                 initial_states=None if before is None else before[None], dt_softplus=True,
                                 dt_limit=m.time_step_limit, return_final_states=True)
            return out[0], after[0]

        def decode(inputs, before):  # the update advances `before` in place
            x, dt, b, c = inputs
            n = len(x)
            out = one_step(before, x.view(n, heads, head_dim), dt[:, :, None].expand(-1, -1, head_dim),
                           a[:, None, None].expand(-1, head_dim, state_size), b.view(n, groups, state_size),
                           c.view(n, groups, state_size), m.D[:, None].expand(-1, head_dim), z=None,
                           dt_bias=m.dt_bias[:, None].expand(-1, head_dim), dt_softplus=True)
            return out, before

        out = x.new_empty(len(x), heads, head_dim, dtype=torch.float32)  # the chunked scan's dtype: the norm takes it so
        scan(step, ssm_state, (x, dt, b, c), prefill, decode, out)
        return m.out_proj(self.gated(out.view(1, len(x), -1), gate[None]).to(hidden_states.dtype))
