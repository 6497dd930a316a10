"""What one step tells the recurrent layers: which rows are whose, and where each sequence's state lives.

Built by engine.packing beside the attention metadata and carried on it (its `recurrent` field), so it
reaches every layer through model(...) as one object.
"""

from dataclasses import dataclass

import torch

from engine.recurrent.states import RecurrentStates


@dataclass
class RecurrentPrefill:
    """A sequence with several new tokens this step (a prompt, or a chunk of one)."""

    rows: slice  # its tokens in the packed batch
    slot: int  # its state slot
    continues: bool  # the slot holds the state after its earlier tokens (a later chunk); else it starts from zeros


@dataclass
class RecurrentMetadata:
    states: RecurrentStates
    prefills: list[RecurrentPrefill]
    decode_rows: slice | torch.Tensor  # the rows of the sequences with one new token
    decode_slots: torch.Tensor  # [D] int64: their slots
    decode_fresh: torch.Tensor | None  # [D] bool: a sequence whose first token this is (a one-token prompt); None: none
    # Every sequence at once, in row order, for kernels that take the whole packed batch (engine.recurrent.fla):
    cu_seqlens: torch.Tensor  # [S + 1] int64: where each sequence's rows start, then the row count
    slots: torch.Tensor  # [S] int64
    fresh: torch.Tensor | None  # [S] bool: a sequence that starts this step (zeros, not its slot); None: none

    @property
    def num_decodes(self) -> int:
        return len(self.decode_slots)
