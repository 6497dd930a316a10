"""Gated DeltaNet on CUDA through flash-linear-attention's kernels (the fla-core package), where it is installed.

One call per layer for the whole step: every sequence of the packed batch at once (its boundaries as
cumulative lengths), each from its slot's state (zeros for a sequence that starts), the new states
scattered back; a step of decodes only through the one-step kernel. fla-core is pinned in
requirements-cuda.lock, which install.sh installs on GPU machines only: installed on a CPU machine,
transformers' own Gated DeltaNet would call its CUDA kernels with CPU tensors. The torch path of
engine.recurrent.gated_delta_net is the reference; scripts/gpu-check.sh compares the two on a GPU
(CI has none, so this path runs only there).
"""

import functools
import importlib.util

import torch

from engine.recurrent.metadata import RecurrentMetadata


@functools.cache
def kernels():
    """fla's (chunked, one-step) gated delta rule; None where fla-core is not installed."""
    if importlib.util.find_spec("fla") is None:
        return None
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule

    return chunk_gated_delta_rule, fused_recurrent_gated_delta_rule


def runs_on(device: torch.device) -> bool:
    return device.type == "cuda" and kernels() is not None


def gated_delta_rule(q, k, v, g, beta, state: torch.Tensor, step: RecurrentMetadata) -> torch.Tensor:
    """q, k [T, k_heads, k_dim], v [T, v_heads, v_dim], g and beta [T, v_heads] -> [T, v_heads, v_dim]; state [slots,
    v_heads, k_dim, v_dim] advanced in every scheduled sequence's slot."""
    chunked, one_step = kernels()
    before = state.index_select(0, step.slots)
    if step.fresh is not None:
        before.masked_fill_(step.fresh.view(-1, 1, 1, 1), 0)
    if step.prefills:
        out, after = chunked(q[None], k[None], v[None], g[None], beta[None], initial_state=before, output_final_state=True,
                             use_qk_l2norm_in_kernel=True, cu_seqlens=step.cu_seqlens)
        out = out[0]
    else:  # one token per sequence, rows in the slots' order
        out, after = one_step(q[:, None], k[:, None], v[:, None], g[:, None], beta[:, None], initial_state=before,
                              output_final_state=True, use_qk_l2norm_in_kernel=True)
        out = out[:, 0]
    state.index_copy_(0, step.slots, after.to(state.dtype))
    return out
