"""What each attention layer keeps of a sequence's past, and how layers share the KV block pool.

A layer attends to the whole context (full attention), to the last `sliding_window` tokens
(Mistral, Gemma 2/3, gpt-oss, Cohere 2), or to the tokens of its own chunk of `attention_chunk`
positions (Llama 4's chunked local attention). Keys a layer can no longer see are never read again,
so their blocks go back to the pool.

Layers of one kind form KV cache groups of equal size (vLLM's hybrid KV cache manager): every group
has its own block table per sequence, and all groups draw from one pool of blocks of the same bytes.
Cache tensor j serves the j-th layer of every group, so a block id names the same memory in each
group's tensors. Gemma 3 (5 sliding : 1 full) gets one full group and five sliding groups; a dense
model gets one group with every layer.

Plain Python, no torch: the block manager and the memory plan use it.
"""

from dataclasses import dataclass

FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"
CHUNKED_ATTENTION = "chunked_attention"
HYBRID = "hybrid"  # Falcon-H1: attention and a Mamba-2 mixer side by side in every layer; the attention is full


@dataclass(frozen=True)
class AttentionSpec:
    """The part of a sequence one attention layer reads: everything, a sliding window, or its chunk."""

    sliding_window: int | None = None  # tokens a query sees, itself included (transformers' meaning)
    attention_chunk: int | None = None  # positions per chunk; a query sees its own chunk up to itself

    def first_visible(self, position: int) -> int:
        """The first key position a query at `position` attends to."""
        if self.sliding_window is not None:
            return max(0, position - self.sliding_window + 1)
        if self.attention_chunk is not None:
            return position - position % self.attention_chunk
        return 0

    @property
    def is_full(self) -> bool:
        return self.sliding_window is None and self.attention_chunk is None

    def max_tokens_held(self, max_new_tokens: int) -> int | None:
        """The most tokens of one sequence this layer holds while up to max_new_tokens are computed in a
        step (those are written before any leaves the window); None: the whole sequence."""
        if self.sliding_window is not None:
            return self.sliding_window - 1 + max_new_tokens
        if self.attention_chunk is not None:
            return self.attention_chunk - 1 + max_new_tokens
        return None

    def describe(self) -> str:
        if self.sliding_window is not None:
            return f"sliding window {self.sliding_window}"
        if self.attention_chunk is not None:
            return f"chunked {self.attention_chunk}"
        return "full"


@dataclass(frozen=True)
class KVCacheGroup:
    spec: AttentionSpec
    layers: tuple[int, ...]  # model layer indices; the j-th uses cache tensor j


@dataclass(frozen=True)
class KVCacheLayout:
    """Which group and which cache tensor each attention layer uses, and the shape of a token's keys."""

    groups: tuple[KVCacheGroup, ...]
    kv_heads: int
    head_dim: int

    @classmethod
    def from_specs(cls, specs: dict[int, AttentionSpec], kv_heads: int, head_dim: int) -> "KVCacheLayout":
        """Layers of each kind in groups of the same size: the count of the rarest kind (as vLLM does).
        A kind whose count is not a multiple of it ends with a smaller group (its blocks are partly unused)."""
        by_kind: dict[AttentionSpec, list[int]] = {}
        for layer in sorted(specs):
            by_kind.setdefault(specs[layer], []).append(layer)
        size = min(len(layers) for layers in by_kind.values())
        groups = []
        for spec, layers in by_kind.items():
            groups += [KVCacheGroup(spec, tuple(layers[i : i + size])) for i in range(0, len(layers), size)]
        # Full-attention groups first: prefix-cache lookups start from them.
        groups.sort(key=lambda g: (not g.spec.is_full, g.layers[0]))
        return cls(tuple(groups), kv_heads, head_dim)

    def block_bytes(self, block_size: int, dtype_bytes: int) -> int:
        """One block of the shared pool: block_size tokens' keys and values in every cache tensor."""
        return 2 * self.layers_per_group * self.kv_heads * self.head_dim * block_size * dtype_bytes

    @property
    def layers_per_group(self) -> int:
        """Cache tensors to allocate: the largest group's layer count."""
        return max(len(g.layers) for g in self.groups)

    @property
    def num_layers(self) -> int:
        return sum(len(g.layers) for g in self.groups)

    def placement(self) -> dict[int, tuple[int, int]]:
        """layer -> (group index, cache tensor index)."""
        return {layer: (g, j) for g, group in enumerate(self.groups) for j, layer in enumerate(group.layers)}

    def specs(self) -> list[AttentionSpec]:
        return [g.spec for g in self.groups]

    def describe(self) -> str:
        """E.g. "1 full + 5 sliding window 1024 groups of 8 layers"."""
        kinds: dict[str, int] = {}
        for g in self.groups:
            kinds[g.spec.describe()] = kinds.get(g.spec.describe(), 0) + 1
        parts = " + ".join(f"{n} {kind}" for kind, n in kinds.items())
        return f"{parts} group{'s' if len(self.groups) > 1 else ''} of {self.layers_per_group} layers"


def layout_from_config(config) -> KVCacheLayout:
    """The layout a config describes (an object or a dict), before the model is probed: for the memory plan."""
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    heads = get("num_attention_heads")
    head_dim = get("head_dim") or get("hidden_size") // heads
    return KVCacheLayout.from_specs(layer_specs_from_config(config), get("num_key_value_heads") or heads, head_dim)


def layer_specs_from_config(config) -> dict[int, AttentionSpec]:
    """Each decoder layer's attention spec as a transformers config describes it (an object or a dict):
    `layer_types` where the config has them, else one sliding window for every layer (Mistral) or none.

    Layers without attention (linear attention, Mamba, short convolutions, MLP-only layers) are not in the
    result: what recurrent layers keep is engine.state_spec's."""
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    num_layers = get("num_hidden_layers")
    window = get("sliding_window")
    chunk = get("attention_chunk_size")
    layer_types = get("layer_types")
    if layer_types is None:
        uses_window = window is not None and get("use_sliding_window", True) is not False
        return {i: AttentionSpec(sliding_window=window if uses_window else None) for i in range(num_layers)}
    specs = {}
    for i, kind in enumerate(layer_types[:num_layers]):
        if kind in (FULL_ATTENTION, HYBRID):
            specs[i] = AttentionSpec()
        elif kind == SLIDING_ATTENTION:
            specs[i] = AttentionSpec(sliding_window=window)
        elif kind == CHUNKED_ATTENTION:
            specs[i] = AttentionSpec(attention_chunk=chunk)
    return specs


def blocks_per_sequence(specs: list[AttentionSpec], block_size: int, num_tokens: int, max_new_tokens: int) -> int:
    """Blocks one sequence of num_tokens holds at most in all groups, computing up to max_new_tokens a step."""
    total = 0
    for spec in specs:
        held = spec.max_tokens_held(max_new_tokens)
        # A window that starts inside a block holds that whole block: one more.
        total += -(-(num_tokens if held is None else min(num_tokens, held)) // block_size) + (held is not None)
    return total


def max_tokens_per_sequence(specs: list[AttentionSpec], block_size: int, num_blocks: int, max_new_tokens: int,
                            limit: int) -> int:
    """The longest sequence, up to limit tokens, that fits in a pool of num_blocks on its own (a model whose
    every layer has a window holds a bounded number of blocks however long the sequence)."""
    low, high = 0, limit
    while low < high:  # blocks_per_sequence grows with num_tokens
        mid = (low + high + 1) // 2
        if blocks_per_sequence(specs, block_size, mid, max_new_tokens) <= num_blocks:
            low = mid
        else:
            high = mid - 1
    return low
