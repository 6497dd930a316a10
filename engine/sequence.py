"""One request's life inside the engine: its tokens, progress, KV blocks, state slot and images."""

import enum
import time

from engine.prompt_images import PromptImages
from engine.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    def __init__(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                 images: PromptImages | None = None):
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.token_ids = list(prompt_token_ids)  # prompt then outputs: what the KV cache must hold
        self.output_token_ids: list[int] = []
        self.params = params
        self.status = SequenceStatus.WAITING
        self.num_computed_tokens = 0  # tokens whose KV is in the cache
        self.num_cached_tokens = 0  # of those, found by prefix caching at admission
        self.block_tables: list[list[int]] = []  # one per KV cache group, given by the block manager
        self.block_hashes: list[int] = []  # chained hashes of full blocks, filled by the block manager
        self.num_cached_blocks = 0  # leading blocks of the block tables already registered for prefix caching
        self.images = images  # the prompt's images (engine.vision), None for text
        self.state_slot: int | None = None  # its recurrent layers' states (engine.state_slots), while it runs
        # Its decode's latest snapshot of those states (engine.state_snapshots): (row, blocks) reserved until the
        # last token of its prefix is read, then the prefix hash it is kept under.
        self.pending_snapshot: tuple[int, int] | None = None
        self.decode_snapshot: int | None = None
        self.num_preemptions = 0
        self.prompt_logprobs: list = []  # SampledToken of prompt tokens 1.. when params.prompt_logprobs is set
        self.finish_reason: str | None = None
        self.arrival_time = time.monotonic()
        self.first_scheduled_time: float | None = None
        self.first_token_time: float | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED

    def prefill_chunk(self, begin: int, budget: int) -> int:
        """How many tokens from `begin` (those computed or found cached) to compute next, within `budget`: never
        cutting an image whose placeholders attend to each other (engine.prompt_images)."""
        end = begin + min(self.num_tokens - begin, budget)
        return (self.images.chunk_end(begin, end) if self.images is not None else end) - begin

    def release_image_embeddings(self) -> None:
        """Drop the vision tower's output: the prefill has passed the images, or the sequence left the batch (a
        preempted one encodes its images again when it is recomputed)."""
        if self.images is not None:
            self.images.embeddings = None

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)
        self.output_token_ids.append(token_id)

    def fill_last_token(self, token_id: int) -> None:
        """The real id of the newest token, appended as a placeholder while it was on the device (engine.overlap)."""
        self.token_ids[-1] = token_id
        self.output_token_ids[-1] = token_id
