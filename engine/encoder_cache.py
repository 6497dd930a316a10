"""Image embeddings kept by the content of their image, so that a repeated image is encoded once."""

from collections import OrderedDict

import torch


class EncoderCache:
    """Image embeddings (with their deepstack features) by their image's content hash, the least recently used
    dropped past max_tokens rows."""

    def __init__(self, max_tokens: int):
        self.max_tokens = max_tokens
        self.entries: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.tokens = 0

    def get(self, content_hash: int) -> torch.Tensor | None:
        embeddings = self.entries.get(content_hash)
        if embeddings is not None:
            self.entries.move_to_end(content_hash)
        return embeddings

    def holds(self, content_hash: int) -> bool:
        """Whether the image's embeddings are kept (what the scheduler asks: a held image costs no encoding)."""
        return content_hash in self.entries

    def put(self, content_hash: int, embeddings: torch.Tensor) -> None:
        if content_hash in self.entries or len(embeddings) > self.max_tokens:
            return
        self.entries[content_hash] = embeddings
        self.tokens += len(embeddings)
        while self.tokens > self.max_tokens:
            self.tokens -= len(self.entries.popitem(last=False)[1])
