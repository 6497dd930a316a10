"""The grammar a gpt-oss answer is held to: the whole harmony message stream, built as an xgrammar structural tag.

Harmony opens a channel with several tokens (`<|channel|>final<|message|>`), so the engine's
trigger after one token (`StructuredOutput.after_token_id`, enough for `</think>`) cannot say
where an answer starts. Extending the engine to a trigger of several tokens would still leave the
channel structure free, and with it whether the model calls at all (tool_choice "required" must
rule the final channel out). So the grammar covers every message the model writes from the
generation prompt on: any number of messages before the last (analysis; with tools, commentary
preambles), each ended by `<|end|>` and followed by `<|start|>assistant`, then the last one:

    tool_choice auto         a call to one of the functions, or a final message of free text
    tool_choice required     a call to one of the functions
    a named function         a call to that function
    response_format & co.    a final message held to the request's own constraint

A call is `<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>` (or the recipient
before the channel, as the template writes the history) and the arguments held to NAME's schema;
the grammar ends there, and so the model can only write a stop token next: its `<|call|>` (a stop
token of gpt-oss's generation config). One call per turn, as gpt-oss was trained: each call ends it.
Free text never holds harmony markup, so a final message cannot be followed by another.
The tag is printed as EBNF (what the engine's `grammar` kind takes).
"""

from appliance.errors import engine_errors
from appliance.serving.constraint import OutputConstraint
from appliance.serving.formats.harmony.parser import CHANNEL, CONSTRAIN, END, MARKERS, MESSAGE, START
from appliance.serving.formats.tools.functions import Function, ToolRequest

NEXT_MESSAGE = START + "assistant"
FINAL = CHANNEL + "final" + MESSAGE
MAX_WHITESPACE = 1  # between JSON tokens of the arguments, as the other tool formats


def call_begins(name: str) -> tuple[str, ...]:
    """How a call to functions.NAME may open: the recipient after the channel (as gpt-oss writes it) or before it
    (as the template writes the history)."""
    recipient = f"to=functions.{name}"
    return (f"{CHANNEL}commentary {recipient} {CONSTRAIN}json{MESSAGE}",
            f"{CHANNEL}commentary {recipient}{CONSTRAIN}json{MESSAGE}",
            f" {recipient}{CHANNEL}commentary {CONSTRAIN}json{MESSAGE}",
            f" {recipient}{CHANNEL}commentary json{MESSAGE}")


def tool_constraint(tools: ToolRequest) -> OutputConstraint | None:
    """The tools' grammar (param "tools"), or None when the model may not call."""
    if not tools.active:
        return None
    from xgrammar.structural_tag import AnyTextFormat, ConstStringFormat, OrFormat, SequenceFormat

    from appliance.serving.formats.tools.grammar import check_schemas

    functions = list(tools.functions)
    check_schemas(functions)
    chosen = [f for f in functions if tools.choice.mode != "function" or f.name == tools.choice.name]
    last = [_call(f) for f in chosen]
    if tools.choice.mode == "auto":
        last.append(SequenceFormat(elements=[ConstStringFormat(value=FINAL), AnyTextFormat(excludes=list(MARKERS))]))
    return OutputConstraint("tools", "grammar", _messages(OrFormat(elements=last), preambles=True))


def answer_constraint(requested: OutputConstraint) -> OutputConstraint:
    """The request's own constraint (response_format, structured_outputs, guided_*) held from where the final
    channel opens; a 400 naming its field when xgrammar refuses it."""
    from xgrammar.structural_tag import ConstStringFormat, GrammarFormat, SequenceFormat

    from engine.structured_output import spec_grammar

    with engine_errors(0.0, {"structured_output": requested.param}):
        answer = str(spec_grammar(requested.to_engine()))
    final = SequenceFormat(elements=[ConstStringFormat(value=FINAL), GrammarFormat(grammar=answer)])
    return OutputConstraint(requested.param, "grammar", _messages(final, preambles=False))


def _call(function: Function):
    from xgrammar.structural_tag import ConstStringFormat, JSONSchemaFormat, OrFormat, SequenceFormat

    arguments = JSONSchemaFormat(json_schema=function.parameters, max_whitespace_cnt=MAX_WHITESPACE)
    opening = OrFormat(elements=[ConstStringFormat(value=begin) for begin in call_begins(function.name)])
    return SequenceFormat(elements=[opening, arguments])


def _messages(last, preambles: bool) -> str:
    """EBNF: any number of ended messages (analysis, and commentary preambles where `preambles`), then `last`."""
    import xgrammar
    from xgrammar.structural_tag import (
        AnyTextFormat,
        ConstStringFormat,
        OrFormat,
        SequenceFormat,
        StarFormat,
        StructuralTag,
        TagFormat,
    )

    channels = ["analysis"] + (["commentary"] if preambles else [])
    earlier = [TagFormat(begin=f"{CHANNEL}{channel}{MESSAGE}", content=AnyTextFormat(excludes=list(MARKERS)), end=END)
               for channel in channels]
    message = OrFormat(elements=earlier) if len(earlier) > 1 else earlier[0]
    before = StarFormat(content=SequenceFormat(elements=[message, ConstStringFormat(value=NEXT_MESSAGE)]))
    tag = StructuralTag(format=SequenceFormat(elements=[before, last]))
    return str(xgrammar.Grammar.from_structural_tag(tag))

