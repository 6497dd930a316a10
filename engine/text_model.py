"""A causal LM for the language model of a multimodal checkpoint whose text model has no causal-LM class in
transformers (Qwen2-VL, Qwen2.5-VL, Qwen3-VL and its MoE): the family's own text model under an LM head,
which is what its ForConditionalGeneration computes for text alone.

Built per family from its text model class, as a subclass of the family's PreTrainedModel, so that
loading, weight conversions, attention and experts implementations work as for any transformers model.
Text positions go to the text model as they are: for text, multimodal RoPE's temporal, height and width
positions are all the token's position, as the multimodal class computes them without images.
"""

from functools import cache

import transformers
from torch import nn
from transformers import GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast


@cache
def text_causal_lm(text_model_name: str) -> type:
    """The causal-LM class over transformers' `text_model_name` (e.g. "Qwen2_5_VLTextModel")."""
    text_model = getattr(transformers, text_model_name)
    family = next(c for c in text_model.__mro__[1:] if c.__name__.endswith("PreTrainedModel"))

    def __init__(self, config):
        family.__init__(self, config)
        self.model = text_model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, position_ids=None, logits_to_keep=0, **kwargs):
        kwargs.pop("return_dict", None)
        hidden = self.model(input_ids=input_ids, position_ids=position_ids, **kwargs).last_hidden_state
        rows = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        return CausalLMOutputWithPast(logits=self.lm_head(hidden[:, rows]))

    return type(text_model_name.removesuffix("TextModel") + "TextForCausalLM", (family, GenerationMixin), {
        "config_class": text_model.config_class,
        # transformers decides whether a class's experts implementation can be set by reading its module's source;
        # this class's is the family's (Qwen3-VL-MoE's experts run transformers' experts interface)
        "_can_set_experts_implementation_cached_value": family._can_set_experts_implementation(),
        "base_model_prefix": "model",
        "_tied_weights_keys": {"lm_head.weight": "model.embed_tokens.weight"},
        "__init__": __init__,
        "forward": forward,
        "get_output_embeddings": lambda self: self.lm_head,
        "set_output_embeddings": lambda self, head: setattr(self, "lm_head", head),
    })
