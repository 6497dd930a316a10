"""Continuous batching under one token budget per step, and one encoder budget for images.

Each step: running sequences first (a decode token each, or the next chunk of a long prefill; a
chunk never cuts an image whose placeholders attend to each other, engine.prompt_images),
then waiting ones while the budget, the sequence limit and the KV pool allow: the lowest priority
value first (vLLM's meaning), then, among equal priorities, the share group (the API's key) that
has been scheduled the fewest tokens for its weight since it last went idle, then arrival order.
When the pool runs out, a running sequence is preempted, the lowest priority and then the newest:
its blocks are freed and it waits again, to be recomputed later (its cached prefix usually survives).
The vision tower runs over the images of every sequence whose chunk reaches them, so the placeholder
tokens it encodes in a step are bounded too (vLLM's encoder compute budget): a chunk whose images
would pass what is left of max_num_encoder_tokens ends before them, and they wait for a later step;
the step's first images go through whatever their size, so that images larger than the budget still
run (engine.vision then runs the tower over them in runs within the budget). Images the encoder cache
holds cost nothing: they are not encoded. For a model with recurrent layers a chunk also ends where the
sequence's states are to be kept for prefix caching (engine.state_snapshots).

Plain Python, no torch.
"""

import itertools
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.block_manager import BlockManager
from engine.errors import QueueFull
from engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledSequence:
    seq: Sequence
    num_new_tokens: int

    @property
    def completes_prompt(self) -> bool:
        """After this step every known token is computed, so the step samples a next token."""
        return self.seq.num_computed_tokens + self.num_new_tokens == self.seq.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_waiting: int,
        max_num_encoder_tokens: int | None = None,
        encoder_cached: Callable[[int], bool] = lambda content_hash: False,
    ):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_waiting = max_waiting
        # placeholder tokens the vision tower may run over in a step (None: no bound, for a model without images)
        self.max_num_encoder_tokens = max_num_encoder_tokens
        self.encoder_cached = encoder_cached  # whether the encoder cache holds an image, by its content hash
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self._arrivals = itertools.count()  # arrival order, kept by a preempted sequence
        self._order: dict[str, int] = {}  # request id -> its arrival number
        self._served: Counter = Counter()  # tokens scheduled per share group while it has work
        self._active: Counter = Counter()  # sequences per share group, waiting or running

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        if len(self.waiting) >= self.max_waiting:
            raise QueueFull(
                f"the waiting queue is full ({self.max_waiting} requests); retry later"
            )
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)
        self._order[seq.request_id] = next(self._arrivals)
        self._active[seq.params.share_group] += 1

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        encoding = 0  # placeholder tokens the vision tower runs over this step, so far

        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            num_new, encoded = self._encoder_chunk(seq, seq.num_computed_tokens,
                                                   self._chunk(seq, seq.num_computed_tokens, budget), encoding)
            if num_new == 0:  # its images wait for a step with encoder budget left; the others go on
                i += 1
                continue
            while not self.block_manager.allocate(seq, num_new):
                victim = self._victim(i)
                self.running.remove(victim)
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break
            else:
                out.scheduled.append(ScheduledSequence(seq, num_new))
                self._served[seq.params.share_group] += num_new
                encoding += encoded
                budget -= num_new
                i += 1

        # Admitting new work right after a preemption would only preempt again.
        if out.preempted:
            return out
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = min(self.waiting, key=self._waiting_order)
            cached = self.block_manager.find_cached_prefix(seq)
            begin = cached.num_blocks * self.block_manager.block_size
            num_new, encoded = self._encoder_chunk(seq, begin, self._chunk(seq, begin, budget), encoding)
            if num_new == 0 or not self.block_manager.can_admit(cached, num_new):
                break
            self.waiting.remove(seq)
            self.block_manager.take_cached_prefix(seq, cached)
            allocated = self.block_manager.allocate(seq, num_new)
            assert allocated, "can_allocate promised enough blocks"
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.scheduled.append(ScheduledSequence(seq, num_new))
            self._served[seq.params.share_group] += num_new
            encoding += encoded
            budget -= num_new
        return out

    def _chunk(self, seq: Sequence, begin: int, budget: int) -> int:
        """The next chunk's tokens from `begin`: a chunk that would pass the point where seq's recurrent states are
        to be kept (engine.state_snapshots) ends there, so that they exist."""
        point = self.block_manager.snapshot_point(seq)
        if point is not None and begin < point < begin + min(budget, seq.num_tokens - begin):
            budget = point - begin
        return seq.prefill_chunk(begin, budget)

    def _encoder_chunk(self, seq: Sequence, begin: int, num_new: int, encoding: int) -> tuple[int, int]:
        """The chunk's tokens from `begin` and the placeholder tokens the vision tower runs over for it, given
        `encoding` so far this step: the chunk cut before its images (0 tokens where it starts at them) when they
        would pass the encoder budget. The step's first images go through whatever their size: a budget below
        a prompt's images delays them, never refuses them."""
        if seq.images is None or self.max_num_encoder_tokens is None:
            return num_new, 0
        cost = seq.images.encoder_tokens(begin, begin + num_new, self.encoder_cached)
        if encoding and encoding + cost > self.max_num_encoder_tokens:
            return seq.images.next_placeholder(begin) - begin, 0
        return num_new, cost

    def _waiting_order(self, seq: Sequence) -> tuple:
        params = seq.params
        return params.priority, self._served[params.share_group] / params.share_weight, self._order[seq.request_id]

    def _victim(self, first: int) -> Sequence:
        """Who gives up its blocks, among the running sequences not scheduled yet this step (from index `first`):
        the lowest priority (the highest value), the newest among equals."""
        running = self.running
        return running[max(range(first, len(running)), key=lambda j: (running[j].params.priority, j))]

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        seq.release_image_embeddings()
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        """Remove seq wherever it is and free its blocks at once."""
        if seq.status == SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status == SequenceStatus.WAITING:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.release_image_embeddings()
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        self._order.pop(seq.request_id, None)
        group = seq.params.share_group
        self._active[group] -= 1
        if self._active[group] <= 0:  # idle: its next request starts with no debt
            del self._active[group]
            self._served.pop(group, None)
