"""A fixed pool of state slots: one per running sequence of a model with recurrent layers.

A slot holds one sequence's state in every recurrent layer (engine.state_spec); the model runner
keeps the tensors, this pool only says which slot is whose. A sequence takes a slot when it is
admitted and gives it back when it finishes or is preempted (recomputed from its first token, its
state is rebuilt then). The block manager owns the pool, so admission asks one object for room.

Plain Python, no torch.
"""

from engine.sequence import Sequence


class StateSlots:
    def __init__(self, num_slots: int):
        self.num_slots = num_slots
        self._free = list(range(num_slots - 1, -1, -1))  # popped from the end: slot 0 first

    @property
    def num_free(self) -> int:
        return len(self._free)

    def take(self, seq: Sequence) -> None:
        """Give seq a slot; its state there is read only after its first tokens wrote it."""
        assert seq.state_slot is None, f"{seq.request_id} holds slot {seq.state_slot} already"
        seq.state_slot = self._free.pop()

    def give_back(self, seq: Sequence) -> None:
        if seq.state_slot is not None:
            self._free.append(seq.state_slot)
            seq.state_slot = None
