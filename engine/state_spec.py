"""What each recurrent layer keeps of a sequence: a state of fixed size, however long the sequence.

Gated DeltaNet layers (Qwen3-Next, Qwen3.5 / 3.6), Mamba-2 layers (Nemotron-H, Granite 4.0-H, Falcon-H1)
and short convolutions (LFM2) keep, per sequence, the last kernel - 1 inputs of their causal
convolution (the conv state, in the model's dtype) and, but for short convolutions, a recurrent state
(Gated DeltaNet: value heads x key dim x value dim; Mamba-2: heads x head dim x state size), kept in
float32 as transformers' reference and vLLM keep it. Beside the paged KV cache the engine keeps a pool
of state slots (engine.state_slots): slot s holds every recurrent layer's state of one running sequence,
and of snapshots of such states at block boundaries, for prefix caching (engine.state_snapshots).

Plain Python, no torch: the block manager and the memory plan use it.
"""

from dataclasses import dataclass
from math import prod

RECURRENT_STATE_BYTES = 4  # float32, whatever the model's dtype: a bfloat16 state drifts over long sequences

GATED_DELTA_NET = "Gated DeltaNet"
MAMBA2 = "Mamba-2"
SHORT_CONV = "short convolution"


@dataclass(frozen=True)
class RecurrentSpec:
    """One recurrent layer's per-sequence state."""

    kind: str  # GATED_DELTA_NET, MAMBA2 or SHORT_CONV
    conv_channels: int
    conv_kernel: int
    recurrent_shape: tuple[int, ...] = ()  # () for a layer without a recurrent state (a short convolution)

    @property
    def conv_state_shape(self) -> tuple[int, int]:
        return self.conv_channels, self.conv_kernel - 1

    def bytes(self, conv_value_bytes: int) -> int:
        recurrent = prod(self.recurrent_shape) * RECURRENT_STATE_BYTES if self.recurrent_shape else 0
        return prod(self.conv_state_shape) * conv_value_bytes + recurrent


@dataclass(frozen=True)
class StateLayout:
    """The recurrent layers of a model, in layer order: state tensor j of a slot is the j-th layer's."""

    layers: tuple[tuple[int, RecurrentSpec], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.layers)

    def placement(self) -> dict[int, int]:
        """layer -> state tensor index."""
        return {layer: j for j, (layer, _) in enumerate(self.layers)}

    def bytes_per_slot(self, conv_value_bytes: int) -> int:
        """One sequence's states in every recurrent layer."""
        return sum(spec.bytes(conv_value_bytes) for _, spec in self.layers)

    def describe(self) -> str:
        """E.g. "30 Gated DeltaNet layers" or "23 Mamba-2 layers"; "" for a model without recurrent layers."""
        kinds: dict[str, int] = {}
        for _, spec in self.layers:
            kinds[spec.kind] = kinds.get(spec.kind, 0) + 1
        return " + ".join(f"{n} {kind} layer{'s' if n > 1 else ''}" for kind, n in kinds.items())


def state_slots_for(max_num_seqs: int, layout: StateLayout) -> int:
    """Slots the engine allocates: one per sequence that may run at once (none without recurrent layers)."""
    return max_num_seqs if layout else 0


def state_snapshots_for(setting: int | None, max_num_seqs: int, layout: StateLayout, prefix_caching: bool) -> int:
    """Snapshots of states at block boundaries the engine keeps for prefix caching (engine.state_snapshots): the
    setting, by default one per sequence that may run; none without recurrent layers or prefix caching."""
    if not layout or not prefix_caching:
        return 0
    return max_num_seqs if setting is None else setting


PREFIX_CACHING_OFF_FOR_RECURRENT = (
    "off: num_state_snapshots is 0, and recurrent layers keep one state per sequence, so without snapshots of it "
    "at block boundaries a cached prefix could not skip their prefill")
