"""One recurrent operation over a step's sequences, each from and back into its own state slot.

Each prefill (a prompt or a chunk of one) runs alone from its slot's state, or from zeros where the
sequence starts; then every decode token runs at once, their states gathered from and scattered back
to their slots. The operation itself (a convolution, a gated delta rule, a Mamba-2 scan) is given.
"""

from collections.abc import Callable

import torch

from engine.recurrent.metadata import RecurrentMetadata

# (inputs of one sequence's rows, its state before them or None: zeros) -> (outputs for those rows, state after)
Prefill = Callable[[tuple[torch.Tensor, ...], torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]
# (inputs of the decode rows [D, ...], their states [D, ...]) -> (outputs [D, ...], states after)
Decode = Callable[[tuple[torch.Tensor, ...], torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def scan(step: RecurrentMetadata, state: torch.Tensor, inputs: tuple[torch.Tensor, ...], prefill: Prefill,
         decode: Decode, out: torch.Tensor) -> torch.Tensor:
    """Fill out's rows with the operation's outputs, and state's slots with the sequences' new states."""
    for p in step.prefills:
        rows, after = prefill(tuple(t[p.rows] for t in inputs), state[p.slot] if p.continues else None)
        out[p.rows] = rows
        state[p.slot] = after
    if step.num_decodes:
        before = state.index_select(0, step.decode_slots)
        if step.decode_fresh is not None:  # a one-token prompt: nothing in its slot is its own
            before.masked_fill_(step.decode_fresh.view(-1, *(1,) * (state.dim() - 1)), 0)
        rows, after = decode(tuple(t[step.decode_rows] for t in inputs), before)
        out[step.decode_rows] = rows
        state.index_copy_(0, step.decode_slots, after.to(state.dtype))
    return out
