"""Tool calling for the chat route: which format a model speaks, its prompt, its grammar, its parser.

    formats        ToolFormat, detect_format(chat_template, vocab), marker_token_ids(fmt, tokenizer)
    functions      check_tools(tools, tool_choice) -> (functions, choice); the 400s for bad definitions
    generic        messages_with_tools(...): tools as system text, for templates without tool support
    history        native_history(messages): the history as tool-aware templates expect it
    grammar        constraint_for(...) -> Constraint: the answer's JSON schema or xgrammar EBNF
    parsers        parser_for(fmt) (feed/close) and parse(fmt, text): content and tool-call deltas
    events         ContentDelta, ToolCallDelta, ToolCall, collect(events)

One request goes: check_tools -> prompt (native_history and `tools=` for a tool-aware template,
messages_with_tools otherwise) -> constraint_for -> generate -> parser over the detokenized text.
`grammar` is not re-exported here because it imports xgrammar (and with it torch).
"""

from appliance.api.tools.events import ContentDelta, ToolCall, ToolCallDelta, collect
from appliance.api.tools.formats import ToolFormat, detect_format, marker_token_ids
from appliance.api.tools.functions import Function, ToolChoice, check_tools
from appliance.api.tools.generic import messages_with_tools
from appliance.api.tools.history import native_history
from appliance.api.tools.parsers import parse, parser_for

__all__ = [
    "ContentDelta",
    "Function",
    "ToolCall",
    "ToolCallDelta",
    "ToolChoice",
    "ToolFormat",
    "check_tools",
    "collect",
    "detect_format",
    "marker_token_ids",
    "messages_with_tools",
    "native_history",
    "parse",
    "parser_for",
]
