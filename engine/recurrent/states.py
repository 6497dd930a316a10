"""The state slots' memory: per recurrent layer, every slot's conv state and recurrent state.

Allocated once by the model runner (engine.state_spec says the shapes); slot s of every tensor is one
sequence's, which engine.state_slots assigns.
"""

import torch

from engine.state_spec import StateLayout


class RecurrentStates:
    def __init__(self, layout: StateLayout, num_slots: int, dtype: torch.dtype, device: torch.device):
        self.layout = layout
        self.num_slots = num_slots
        # The conv state holds the layer's inputs, in the model's dtype; the recurrent state float32 (engine.state_spec).
        self.conv = [torch.zeros(num_slots, *spec.conv_state_shape, dtype=dtype, device=device)
                     for _, spec in layout.layers]
        self.recurrent = [torch.zeros(num_slots, *spec.recurrent_shape, dtype=torch.float32, device=device)
                          if spec.recurrent_shape else None for _, spec in layout.layers]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.conv) + sum(t.nbytes for t in self.recurrent if t is not None)
