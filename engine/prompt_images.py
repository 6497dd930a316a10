"""A prompt's images as the engine keeps them beside its sequence: what the vision tower takes, where the
embeddings go among the prompt's tokens, and what identifies each image for prefix caching.

Plain Python, no torch: the tensors are opaque here (engine.vision makes and reads them), so that the
sequence, the scheduler and the block manager stay importable without torch.
"""

import bisect
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ImageSpan:
    """One image's placeholder tokens: token indices [start, end) of the prompt, and its content hash."""

    start: int
    end: int
    content_hash: int


@dataclass
class PromptImages:
    encoder_inputs: list[dict]  # per image, in order: the vision tower's inputs (pixel_values, image_grid_thw, ...)
    rows: list[int]  # the token index of each placeholder token, in order: embedding row k goes to token rows[k]
    spans: list[ImageSpan]  # one per image, in order
    rope_positions: object | None = None  # multimodal RoPE: [3, prompt length] positions; None where positions are plain
    rope_delta: int = 0  # multimodal RoPE: a generated token at index i has position i + rope_delta
    bidirectional: bool = False  # an image's placeholders attend to each other both ways (Gemma 3): never cut one
    # [len(rows), hidden], or for deepstack [len(rows), 1 + deepstack layers, hidden] (row k's embedding, then its
    # feature per layer): held from the first chunk that needs them to the last
    embeddings: object | None = None

    @property
    def num_images(self) -> int:
        return len(self.spans)

    @property
    def end(self) -> int:
        """The token index after the last placeholder: once the prefill passes it, the embeddings are done with."""
        return self.spans[-1].end

    def reaches_placeholders(self, begin: int, end: int) -> bool:
        """Tokens [begin, end) hold some of the placeholders: a chunk of them needs the embeddings."""
        return bisect.bisect_left(self.rows, begin) < bisect.bisect_left(self.rows, end)

    def next_placeholder(self, begin: int) -> int:
        """The token index of the first placeholder at or after `begin` (a chunk from `begin` that reaches some)."""
        return self.rows[bisect.bisect_left(self.rows, begin)]

    def placeholders(self, span: ImageSpan) -> int:
        """The image's placeholder tokens: its embeddings' rows."""
        return bisect.bisect_left(self.rows, span.end) - bisect.bisect_left(self.rows, span.start)

    def encoder_tokens(self, begin: int, end: int, cached: Callable[[int], bool]) -> int:
        """Placeholder tokens the vision tower runs over if a chunk of tokens [begin, end) is computed now: those of
        every image the encoder cache does not hold (`cached`: by content hash; engine.vision encodes a prompt's
        images when its chunk first reaches them, all at once), when the chunk reaches them and their embeddings
        are not held."""
        if self.embeddings is not None or not self.reaches_placeholders(begin, end):
            return 0
        return sum(self.placeholders(span) for span in self.spans if not cached(span.content_hash))

    def content_keys(self, start: int, end: int) -> tuple[int, ...]:
        """The content hashes of the images whose placeholders lie in tokens [start, end): what, beside the token
        ids, decides whether a block of those tokens is the same."""
        return tuple(span.content_hash for span in self.spans if span.start < end and start < span.end)

    def chunk_end(self, begin: int, end: int) -> int:
        """Where a prefill chunk of tokens [begin, end) should end so that it cuts no bidirectional image: before
        the image it would cut, or, where the chunk starts inside or at that image, after it (past the budget)."""
        if not self.bidirectional:
            return end
        for span in self.spans:
            if span.start < end < span.end:
                return span.start if span.start > begin else span.end
        return end
