"""Snapshots of recurrent states at block boundaries, so that prefix caching works for models with recurrent layers.

A cached KV prefix is useless to a recurrent layer without its state after that prefix, and a sequence's
state slot holds only its latest one. So when a sequence's prefill reaches the end of its prompt's last
whole block (the scheduler ends a chunk there: vLLM's "align" mode), its slot is copied into a snapshot,
keyed by the prefix hash of that block (engine.block_manager: the hash chain covers tokens and images);
a later sequence whose cached prefix ends at that block starts from a copy of the snapshot in its own slot.
Its decode keeps one more, moved on at each block's end: the next turn of a conversation re-sends the
answer, so its hit reaches the answer's last whole block rather than stopping at the prompt's.

A decode step's snapshot is copied before its prefix can be named: the block's last token may still be
on the device (engine.overlap). Its row is reserved (no hit finds it) and named when the token is read.

The pool is bounded: the least recently saved or restored snapshot gives its room to a new one. A
snapshot whose prefix's blocks are evicted is dropped then (the block manager says so).

Snapshot k is row first_row + k of the state tensors (engine.recurrent.states), after the slots. This pool
only says which row holds which prefix and queues the copies (source row, destination row); the model
runner makes them, in order, before its next forward, when every slot holds the state after the last step.

Plain Python, no torch.
"""

from collections import OrderedDict


class StateSnapshots:
    def __init__(self, first_row: int, count: int):
        self.count = count
        self._rows: OrderedDict[int, int] = OrderedDict()  # prefix hash -> row, least recently used first
        self._free = list(range(first_row + count - 1, first_row - 1, -1))  # popped from the end: the first row first
        self._copies: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self._rows)

    def holds(self, prefix_hash: int) -> bool:
        return prefix_hash in self._rows

    def save(self, slot: int, prefix_hash: int) -> None:
        """Queue a copy of the state in `slot` as the snapshot of the prefix ending in the block `prefix_hash` names."""
        if prefix_hash in self._rows:
            self._rows.move_to_end(prefix_hash)
            return
        row = self.reserve(slot)
        if row is not None:
            self._rows[prefix_hash] = row

    def reserve(self, slot: int) -> int | None:
        """Queue a copy of the state in `slot` into a row no hit finds until it is named; None: every row is
        reserved already."""
        if self._free:
            row = self._free.pop()
        elif self._rows:  # the least recently used gives its row (a restore from it already queued runs first)
            _, row = self._rows.popitem(last=False)
        else:
            return None
        self._copies.append((slot, row))
        return row

    def name(self, row: int, prefix_hash: int) -> None:
        """The reserved row holds the states at the end of the prefix `prefix_hash` names: hits find it now (or,
        where another row holds that prefix already, that one, and this row is free again)."""
        if prefix_hash in self._rows:
            self._rows.move_to_end(prefix_hash)
            self._free.append(row)
        else:
            self._rows[prefix_hash] = row

    def release(self, row: int) -> None:
        """A reserved row that will not be named (its sequence left before its token was read)."""
        self._free.append(row)

    def restore(self, prefix_hash: int, slot: int) -> None:
        """Queue a copy of the prefix's snapshot into `slot`, where its sequence goes on from it."""
        self._rows.move_to_end(prefix_hash)
        self._copies.append((self._rows[prefix_hash], slot))

    def drop(self, prefix_hash: int) -> None:
        """The prefix's blocks are evicted: its snapshot can no longer be used."""
        row = self._rows.pop(prefix_hash, None)
        if row is not None:
            self._free.append(row)

    def take_copies(self) -> list[tuple[int, int]]:
        """The queued (source row, destination row) copies, in order; the caller makes them all."""
        copies, self._copies = self._copies, []
        return copies
