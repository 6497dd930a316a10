"""Gated DeltaNet (Qwen3-Next, Qwen3.5 / 3.6) on a packed batch.

The layer projects q, k, v (through a causal convolution), the output gate z and the per-head b (write
strength) and a (decay); each sequence's recurrent state (value heads x key dim x value dim) is advanced
by the gated delta rule: transformers' chunked form for prefills, its one-step form for decodes; on CUDA,
where fla-core is installed, its kernels over the whole step (engine.recurrent.fla).
"""

import torch
import torch.nn.functional as F

from engine.recurrent import fla
from engine.recurrent.conv import causal_conv
from engine.recurrent.forward import EngineForward
from engine.recurrent.metadata import RecurrentMetadata
from engine.recurrent.scan import scan
from engine.state_spec import GATED_DELTA_NET, RecurrentSpec


class GatedDeltaNetForward(EngineForward):
    MODULES = ("Qwen3NextGatedDeltaNet", "Qwen3_5GatedDeltaNet", "Qwen3_5MoeGatedDeltaNet")

    @staticmethod
    def spec(module) -> RecurrentSpec:
        return RecurrentSpec(GATED_DELTA_NET, module.conv_dim, module.conv_kernel_size,
                             (module.num_v_heads, module.head_k_dim, module.head_v_dim))

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x [1, T, hidden] -> the convolution's input [T, conv_dim], z [T, v_heads, v_dim], b and a [T, v_heads]."""
        m = self.module
        if hasattr(m, "in_proj_qkvz"):  # Qwen3-Next: q, k, v, z (and b, a) interleaved per key head
            q, k, v, z, b, a = m.fix_query_key_value_ordering(m.in_proj_qkvz(x), m.in_proj_ba(x))
            return torch.cat([t[0].flatten(1) for t in (q, k, v)], dim=-1), z[0], b[0], a[0]
        z = m.in_proj_z(x)[0].view(x.shape[1], -1, m.head_v_dim)
        return m.in_proj_qkv(x)[0], z, m.in_proj_b(x)[0], m.in_proj_a(x)[0]

    def forward(self, hidden_states: torch.Tensor, step: RecurrentMetadata) -> torch.Tensor:
        m = self.module
        length = hidden_states.shape[1]
        conv_state, recurrent_state = self.states(step)
        mixed, z, b, a = self.project(hidden_states)
        mixed = causal_conv(mixed, m.conv1d.weight, m.conv1d.bias, m.activation, conv_state, step)
        q, k, v = torch.split(mixed, [m.key_dim, m.key_dim, m.value_dim], dim=-1)
        q, k = q.view(length, -1, m.head_k_dim), k.view(length, -1, m.head_k_dim)
        v = v.view(length, -1, m.head_v_dim)
        beta = b.sigmoid()
        g = -m.A_log.float().exp() * F.softplus(a.float() + m.dt_bias)  # the decay, in log space
        if fla.runs_on(q.device):
            out = fla.gated_delta_rule(q, k, v, g, beta, recurrent_state, step)
        else:
            out = self.torch_gated_delta_rule(q, k, v, g, beta, recurrent_state, step)
        out = m.norm(out.reshape(-1, m.head_v_dim), z.reshape(-1, m.head_v_dim)).reshape(1, length, -1)
        return m.out_proj(out)

    def torch_gated_delta_rule(self, q, k, v, g, beta, recurrent_state, step: RecurrentMetadata) -> torch.Tensor:
        """transformers' torch reference, one prefill at a time and the decodes together."""
        chunked, one_step = self.reference("torch_chunk_gated_delta_rule"), self.reference("torch_recurrent_gated_delta_rule")

        def prefill(inputs, before):
            out, after = chunked(*(t[None] for t in inputs), initial_state=None if before is None else before[None],
                                 output_final_state=True, use_qk_l2norm_in_kernel=True)
            return out[0], after[0]

        def decode(inputs, before):
            out, after = one_step(*(t[:, None] for t in inputs), initial_state=before, output_final_state=True,
                                  use_qk_l2norm_in_kernel=True)
            return out[:, 0], after

        return scan(step, recurrent_state, (q, k, v, g, beta), prefill, decode, torch.empty_like(v))
