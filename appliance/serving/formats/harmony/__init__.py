"""gpt-oss's harmony format: reasoning on the analysis channel, calls on the commentary channel to functions.NAME,
the answer on the final channel (https://cookbook.openai.com/articles/openai-harmony).

    detect(tokenizer)   HarmonyFormat where the vocabulary has harmony's markers and the chat template writes them
    conversation        the chat as gpt-oss's own chat template takes it; reasoning_effort reaches it
    grammar             the whole message stream held to the tools' calls or the request's answer constraint
    parser              the output back into reasoning, content and tool calls

The prompt is rendered by the model's own chat template, and the output read by our parser, to the
spec: the `openai-harmony` package cannot serve here, as it downloads its tiktoken vocabulary
(o200k_base) at run time and renders and parses in that vocabulary's token ids only.
"""

from dataclasses import dataclass
from functools import partial

from appliance.serving.formats.harmony.conversation import harmony_messages
from appliance.serving.formats.harmony.grammar import answer_constraint, tool_constraint
from appliance.serving.formats.harmony.parser import CHANNEL, MARKERS, MESSAGE, START, HarmonyParser
from appliance.serving.formats.output import EFFORTS, OutputReading
from appliance.serving.formats.tools.functions import ToolRequest


def detect(tokenizer) -> "HarmonyFormat | None":
    """Harmony where harmony's markers are tokens of the vocabulary and the chat template writes messages with them."""
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if not isinstance(template, str) or not all(marker in template for marker in (START, CHANNEL, MESSAGE)):
        return None
    vocab = tokenizer.get_vocab()
    if not all(marker in vocab for marker in MARKERS):
        return None
    return HarmonyFormat(frozenset(vocab[marker] for marker in MARKERS))


@dataclass(frozen=True)
class HarmonyFormat:
    marker_ids: frozenset[int]  # the detokenizer keeps them: they frame every message

    name = "harmony"
    reasoning_efforts = EFFORTS  # what gpt-oss's system message takes (`Reasoning: low|medium|high`)

    def conversation(self, messages: list[dict], tools: ToolRequest,
                     reasoning_effort: str | None = None) -> tuple[list[dict], dict]:
        arguments = {"tools": [_described(tool) for tool in tools.definitions]} if tools.active else {}
        if reasoning_effort is not None:
            arguments["reasoning_effort"] = reasoning_effort
        return harmony_messages(messages), arguments

    def reading(self, prompt: str, tools: ToolRequest) -> OutputReading:
        return OutputReading(tool_constraint(tools), None, self.marker_ids, partial(HarmonyParser, tools.active),
                             answer=answer_constraint)


def _described(tool: dict) -> dict:
    """The template writes every function's description (`"// " + description`); OpenAI's is optional."""
    function = tool["function"]
    return tool if "description" in function else {**tool, "function": {**function, "description": ""}}
