"""Which recurrent mixer modules the engine runs, and putting its forward in their place.

A module is recognized by its class (transformers' own mixer classes of the supported families, listed
with each forward); engine.capabilities asks here when it walks a model's layers, engine.loader when it
gives a loaded model the engine's forwards.
"""

from torch import nn

from engine.recurrent.forward import EngineForward
from engine.recurrent.gated_delta_net import GatedDeltaNetForward
from engine.recurrent.mamba2 import Mamba2Forward
from engine.recurrent.short_conv import ShortConvForward
from engine.state_spec import RecurrentSpec, StateLayout

FORWARDS: dict[str, type[EngineForward]] = {
    name: forward for forward in (GatedDeltaNetForward, Mamba2Forward, ShortConvForward) for name in forward.MODULES}


def recurrent_spec(module: nn.Module) -> RecurrentSpec | None:
    """The state a module keeps per sequence, if it is a recurrent mixer the engine runs."""
    forward = FORWARDS.get(type(module).__name__)
    return forward.spec(module) if forward is not None else None


def recurrent_mixers(layers: nn.ModuleList) -> list[tuple[int, nn.Module]]:
    """(layer index, mixer module) of every recurrent mixer the engine runs, in layer order."""
    return [(i, module) for i, layer in enumerate(layers) for module in layer.modules()
            if type(module).__name__ in FORWARDS]


def state_layout(layers: nn.ModuleList) -> StateLayout:
    return StateLayout(tuple((i, recurrent_spec(module)) for i, module in recurrent_mixers(layers)))


def use_engine_forwards(layers: nn.ModuleList) -> StateLayout:
    """Give each recurrent mixer of the decoder layers the engine's forward; the layout of their states."""
    for index, (_, module) in enumerate(recurrent_mixers(layers)):
        module.forward = FORWARDS[type(module).__name__](module, index)
    return state_layout(layers)
