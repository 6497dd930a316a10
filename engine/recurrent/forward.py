"""The engine's forward of one recurrent mixer module, put in place of the module's own at load.

During the engine's steps (the attention metadata carries RecurrentMetadata) it runs the family's
packed forward; anywhere else (generate(), embeddings, the load-time probe) the module's own forward.
"""

import inspect
import sys

import torch
from torch import nn

from engine.recurrent.metadata import RecurrentMetadata
from engine.state_spec import RecurrentSpec


class EngineForward:
    MODULES: tuple[str, ...] = ()  # class names of transformers' mixer modules this forward runs

    def __init__(self, module: nn.Module, index: int):
        self.module = module
        self.index = index  # its state tensors in RecurrentStates
        self.own_forward = module.forward

    @staticmethod
    def spec(module: nn.Module) -> RecurrentSpec:
        raise NotImplementedError

    def reference(self, name: str):
        """The model module's torch function `name`: transformers' reference math for one sequence (unwrapped
        from transformers' kernel dispatch, which would send CPU tensors to a CUDA package where one is installed)."""
        return inspect.unwrap(getattr(sys.modules[type(self.module).__module__], name))

    def __call__(self, hidden_states: torch.Tensor, *args, attention_metadata=None, **kwargs) -> torch.Tensor:
        step = getattr(attention_metadata, "recurrent", None)
        if step is None:
            return self.own_forward(hidden_states, *args, attention_metadata=attention_metadata, **kwargs)
        return self.forward(hidden_states, step)

    def forward(self, hidden_states: torch.Tensor, step: RecurrentMetadata) -> torch.Tensor:
        """hidden_states [1, T, hidden] of the packed batch -> [1, T, hidden]."""
        raise NotImplementedError

    def states(self, step: RecurrentMetadata) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This layer's (conv state, recurrent state) tensors over all slots."""
        return step.states.conv[self.index], step.states.recurrent[self.index]
