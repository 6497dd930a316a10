"""The state slots' memory: per recurrent layer, every slot's conv state and recurrent state.

Allocated once by the model runner (engine.state_spec says the shapes); row s < num_slots of every tensor
is one sequence's slot, which engine.state_slots assigns; the rows after them hold snapshots of states
at block boundaries (engine.state_snapshots).
"""

import torch

from engine.state_spec import StateLayout


class RecurrentStates:
    def __init__(self, layout: StateLayout, num_slots: int, dtype: torch.dtype, device: torch.device,
                 num_snapshots: int = 0):
        self.layout = layout
        self.num_slots = num_slots
        self.num_snapshots = num_snapshots
        rows = num_slots + num_snapshots
        # The conv state holds the layer's inputs, in the model's dtype; the recurrent state float32 (engine.state_spec).
        self.conv = [torch.zeros(rows, *spec.conv_state_shape, dtype=dtype, device=device)
                     for _, spec in layout.layers]
        self.recurrent = [torch.zeros(rows, *spec.recurrent_shape, dtype=torch.float32, device=device)
                          if spec.recurrent_shape else None for _, spec in layout.layers]

    @property
    def nbytes(self) -> int:
        """The slots' and the snapshots' memory."""
        return sum(t.nbytes for t in self.conv) + sum(t.nbytes for t in self.recurrent if t is not None)

    @property
    def row_bytes(self) -> int:
        """One slot's (or snapshot's) memory."""
        return self.nbytes // (self.num_slots + self.num_snapshots)

    def copy(self, copies: list[tuple[int, int]]) -> None:
        """Copy row source into row destination in every layer, pair by pair in order (a later pair may read
        what an earlier one wrote)."""
        for source, destination in copies:
            for t in self.conv + self.recurrent:
                if t is not None:
                    t[destination] = t[source]
