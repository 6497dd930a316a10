"""Which tool-call format a model speaks, read from its chat template (and vocabulary).

A template that renders `tools` was written for one format, and the model was trained to
answer in it: Hermes/Qwen (`<tool_call>`), Llama 3 (`<|python_tag|>`, `"parameters"`),
Mistral (`[TOOL_CALLS]` and a list) or Mistral's tekken v11+ (`[TOOL_CALLS]name[ARGS]{...}`). A template that never mentions `tools` cannot show the model its
functions at all, so such a model gets our generic format (see `generic`) whatever its vocabulary.
"""

import re
from collections.abc import Collection
from enum import Enum


class ToolFormat(str, Enum):
    HERMES = "hermes"
    LLAMA3 = "llama3"
    MISTRAL = "mistral"
    MISTRAL_ARGS = "mistral_args"  # tekken v11+: [TOOL_CALLS]name[ARGS]{...}
    GENERIC = "generic"

    @property
    def markers(self) -> tuple[str, ...]:
        """The strings that frame calls: where they are special tokens of the vocabulary, the
        detokenizer must keep them (skip_special_tokens would drop them and the calls with them)."""
        return _MARKERS[self]

    @property
    def native(self) -> bool:
        """Whether the chat template renders the tools itself (pass them as `tools=`)."""
        return self is not ToolFormat.GENERIC


_MARKERS = {
    ToolFormat.HERMES: ("<tool_call>", "</tool_call>"),
    ToolFormat.LLAMA3: ("<|python_tag|>",),
    ToolFormat.MISTRAL: ("[TOOL_CALLS]",),
    ToolFormat.MISTRAL_ARGS: ("[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"),
    ToolFormat.GENERIC: (),
}

def marker_token_ids(fmt: ToolFormat, tokenizer) -> frozenset[int]:
    """The ids of the format's markers that are single tokens of this tokenizer.

    Where they are special tokens (Llama 3's `<|python_tag|>`, Mistral's `[TOOL_CALLS]`),
    decoding with skip_special_tokens drops them; the detokenizer must keep these ids.
    """
    vocab = tokenizer.get_vocab()
    return frozenset(vocab[marker] for marker in fmt.markers if marker in vocab)


_TOOLS_VARIABLE = re.compile(r"\btools\b")


def detect_format(chat_template: str | None, vocab: Collection[str] | None = None) -> ToolFormat:
    """The format of a model's tool calls: by the markers its template writes, else by its vocabulary.

    `vocab` is anything with `in` over token strings (a set, or the dict of `get_vocab()`); it
    only decides for a template that renders tools but builds its markers out of variables.
    """
    if not chat_template or not _TOOLS_VARIABLE.search(chat_template):
        return ToolFormat.GENERIC
    if "[TOOL_CALLS]" in chat_template:
        return ToolFormat.MISTRAL_ARGS if "[ARGS]" in chat_template else ToolFormat.MISTRAL
    if "<tool_call>" in chat_template:
        return ToolFormat.HERMES
    if "<|python_tag|>" in chat_template or '"parameters"' in chat_template:
        return ToolFormat.LLAMA3
    vocab = vocab or ()
    if "[TOOL_CALLS]" in vocab and "[ARGS]" in vocab:
        return ToolFormat.MISTRAL_ARGS
    for fmt in (ToolFormat.MISTRAL, ToolFormat.HERMES, ToolFormat.LLAMA3):
        if fmt.markers[0] in vocab:
            return fmt
    return ToolFormat.GENERIC
