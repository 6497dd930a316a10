"""The parser for a format, streaming or all at once.

Streaming: `parser = parser_for(fmt)`, then `parser.feed(delta)` for each piece of detokenized
text and `parser.close()` at the end, each returning content and tool-call deltas. Whole:
`parse(fmt, text)` runs the same parser over all the text, so both give the same message.
"""

from collections.abc import Callable

from appliance.serving.formats.events import ToolCall, collect, new_call_id
from appliance.serving.formats.tools.formats import ToolFormat
from appliance.serving.formats.tools.generic_parser import GenericParser
from appliance.serving.formats.tools.hermes import HermesParser
from appliance.serving.formats.tools.llama3 import Llama3Parser
from appliance.serving.formats.tools.mistral import MistralParser
from appliance.serving.formats.tools.mistral_args import MistralArgsParser
from appliance.serving.formats.tools.stream import StreamParser

_PARSERS: dict[ToolFormat, type[StreamParser]] = {
    ToolFormat.HERMES: HermesParser,
    ToolFormat.LLAMA3: Llama3Parser,
    ToolFormat.MISTRAL: MistralParser,
    ToolFormat.MISTRAL_ARGS: MistralArgsParser,
    ToolFormat.GENERIC: GenericParser,
}


def parser_for(fmt: ToolFormat, new_id: Callable[[], str] = new_call_id) -> StreamParser:
    """A fresh parser for one choice of one response (`new_id` makes each call's id)."""
    return _PARSERS[fmt](new_id=new_id)


def parse(fmt: ToolFormat, text: str, new_id: Callable[[], str] = new_call_id) -> tuple[str | None, list[ToolCall]]:
    """(content, calls) of a whole generated text; content None when the model wrote only calls."""
    parser = parser_for(fmt, new_id)
    return collect(parser.feed(text) + parser.close())
