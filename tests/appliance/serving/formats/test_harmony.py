"""gpt-oss's harmony format: detection, the conversation through gpt-oss's real template, the grammar (checked with
xgrammar over a tokenizer with harmony's tokens), and the parser, whole and cut into every possible delta."""

import json

import pytest

from appliance.errors import APIError
from appliance.serving.constraint import OutputConstraint
from appliance.serving.formats import harmony, output_format
from appliance.serving.formats.events import ContentDelta, ReasoningDelta, ToolCallStart, collect, reasoning
from appliance.serving.formats.harmony.parser import HarmonyParser
from appliance.serving.formats.tools.functions import tool_request
from tests.appliance.api.harmony_model import WEATHER_TOOL, harmony_tokenizer
from tests.appliance.serving.formats.templates import real_template

ANALYSIS = "<|channel|>analysis<|message|>The user wants the weather.<|end|>"
CALL = ('<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>'
        '{"city": "Paris"}<|call|>')
FINAL = "<|start|>assistant<|channel|>final<|message|>It is sunny.<|return|>"
ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}}}


@pytest.fixture(scope="module")
def tokenizer(default_model_path):
    return harmony_tokenizer(default_model_path)


def read(text: str, tools_active: bool = True, pieces: int | None = None):
    """The events of `text` fed whole, or in `pieces`-character deltas."""
    parser = HarmonyParser(tools_active, new_id=lambda: "call_1")
    step = pieces or len(text) or 1
    events = [e for i in range(0, len(text), step) for e in parser.feed(text[i:i + step], 1)]
    return events + parser.close()


def test_detected_only_with_harmony_tokens_and_template(tokenizer, default_model_path):
    from transformers import AutoTokenizer

    found = output_format(tokenizer)
    assert found.name == "harmony" and found.reasoning_efforts == ("low", "medium", "high")
    plain = AutoTokenizer.from_pretrained(default_model_path)
    plain.chat_template = real_template("gpt-oss")
    assert harmony.detect(plain) is None  # the template without the tokens: not harmony
    assert output_format(plain).name != "harmony"


@pytest.mark.parametrize("pieces", [None, 1, 2, 3, 7])
def test_reasoning_then_a_call(pieces):
    events = read(ANALYSIS + CALL, pieces=pieces)
    assert reasoning(events) == "The user wants the weather."
    content, calls = collect(events)
    assert content is None and [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert [e for e in events if isinstance(e, ToolCallStart)] == [ToolCallStart(0, "call_1", "get_weather")]


@pytest.mark.parametrize("pieces", [None, 1, 5])
def test_reasoning_then_a_final_answer(pieces):
    events = read(ANALYSIS + FINAL, pieces=pieces)
    assert reasoning(events) == "The user wants the weather."
    assert collect(events) == ("It is sunny.", [])


def test_the_recipient_before_the_channel_and_a_preamble():
    text = ("<|channel|>commentary<|message|>Checking.<|end|><|start|>assistant to=functions.add<|channel|>commentary "
            'json<|message|>{"a": 1, "b": 2}<|call|>')
    content, calls = collect(read(text))
    assert content == "Checking." and [(c.name, c.arguments) for c in calls] == [("add", '{"a": 1, "b": 2}')]


def test_a_call_cut_off_is_not_complete_and_not_content():
    events = read(ANALYSIS + CALL[:CALL.index('"Paris"')])
    assert collect(events) == (None, [])
    assert any(isinstance(e, ToolCallStart) for e in events)


def test_calls_without_tools_and_other_recipients_are_reasoning():
    events = read(CALL, tools_active=False)
    assert collect(events) == (None, []) and reasoning(events) == '{"city": "Paris"}'
    browse = '<|channel|>analysis to=browser.search<|message|>{"query": "x"}<|call|>'
    assert reasoning(read(browse)) == '{"query": "x"}'


def test_text_outside_the_format_is_content():
    assert collect(read("Just text, no channels.")) == ("Just text, no channels.", [])
    assert collect(read("x" * 300)) == ("x" * 300, [])  # past any header's length: streamed as content


def test_reasoning_tokens_count_the_analysis_message():
    parser = HarmonyParser(True)
    for piece in ["<|channel|>", "analysis", "<|message|>", "Hm", ".", "<|end|>", "<|start|>", "assistant",
                  "<|channel|>", "final", "<|message|>", "Yes", "<|return|>"]:
        parser.feed(piece, 1)
    parser.close()
    assert parser.reasoning_tokens == 6


def render(tokenizer, messages, tools=None, **kwargs):
    fmt = output_format(tokenizer)
    request = tool_request(tools, None)
    messages, arguments = fmt.conversation(messages, request, **kwargs)
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **arguments)


def test_conversation_through_the_real_template(tokenizer):
    """Instructions become the developer message; a turn's reasoning goes back as its analysis before its call;
    parallel calls become one call each, followed by its own result; arguments are written as JSON objects."""
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and 1+2?"},
        {"role": "assistant", "content": "", "reasoning_content": "Two calls.",
         "tool_calls": [{"id": "a", "type": "function", "function": {"name": "get_weather",
                                                                     "arguments": '{"city": "Paris"}'}},
                        {"id": "b", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]},
        {"role": "tool", "tool_call_id": "b", "content": "3"},
        {"role": "tool", "tool_call_id": "a", "content": "sunny"},
        {"role": "developer", "content": "Answer in French."},
    ]
    prompt = render(tokenizer, messages, [WEATHER_TOOL, ADD], reasoning_effort="high")
    assert "Reasoning: high" in prompt
    assert "<|start|>developer<|message|># Instructions\n\nBe brief.\n\nAnswer in French.\n\n# Tools" in prompt
    assert "type get_weather = (_: {\ncity: string,\n}) => any;" in prompt
    assert ('<|start|>assistant<|channel|>analysis<|message|>Two calls.<|end|>'
            '<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>'
            '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"sunny"<|end|>'
            '<|start|>assistant to=functions.add<|channel|>commentary json<|message|>{"a": 1, "b": 2}<|call|>'
            '<|start|>functions.add to=assistant<|channel|>commentary<|message|>"3"<|end|>') in prompt
    assert prompt.endswith("<|start|>assistant")


def test_an_answered_turn_drops_its_reasoning_and_a_call_turn_keeps_its_text(tokenizer):
    answered = [{"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!", "reasoning_content": "Greet back."},
                {"role": "user", "content": "Again"}]
    prompt = render(tokenizer, answered)
    assert "<|start|>assistant<|channel|>final<|message|>Hello!<|end|>" in prompt and "Greet back." not in prompt
    assert "Reasoning: medium" in prompt  # the template's default
    both = [{"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Let me check.", "reasoning_content": "Call it.",
             "tool_calls": [{"id": "a", "type": "function", "function": {"name": "add", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "a", "content": "0"}]
    assert "<|channel|>analysis<|message|>Call it.\n\nLet me check.<|end|>" in render(tokenizer, both, [ADD])


@pytest.fixture(scope="module")
def compiler(tokenizer):
    import xgrammar

    return xgrammar.GrammarCompiler(xgrammar.TokenizerInfo.from_huggingface(
        tokenizer, vocab_size=len(tokenizer), stop_token_ids=tokenizer.convert_tokens_to_ids(["<|return|>", "<|call|>"])))


def accepts(compiler, tokenizer, constraint: OutputConstraint, text: str, ended: bool = True) -> bool:
    """Whether the grammar takes `text` (and, where `ended`, then a stop token)."""
    import xgrammar

    matcher = xgrammar.GrammarMatcher(compiler.compile_grammar(constraint.value))
    if not all(matcher.accept_token(t) for t in tokenizer.encode(text, add_special_tokens=False)):
        return False
    return not ended or matcher.accept_token(tokenizer.convert_tokens_to_ids("<|call|>"))


@pytest.mark.parametrize("choice,call_ok,final_ok", [("auto", True, True), ("required", True, False),
                                                     ({"type": "function", "function": {"name": "add"}}, False, False)])
def test_the_tools_grammar(compiler, tokenizer, choice, call_ok, final_ok):
    fmt = output_format(tokenizer)
    constraint = fmt.reading("", tool_request([WEATHER_TOOL, ADD], choice)).constraint(None)
    assert constraint.param == "tools" and constraint.kind == "grammar"
    body = CALL.removeprefix("<|start|>assistant").removesuffix("<|call|>")
    assert accepts(compiler, tokenizer, constraint, ANALYSIS + "<|start|>assistant" + body) is call_ok
    assert accepts(compiler, tokenizer, constraint, body) is call_ok  # reasoning is not required
    assert accepts(compiler, tokenizer, constraint,
                   "<|channel|>final<|message|>It is sunny.") is final_ok
    wrong = body.replace('"Paris"', "7")  # arguments against the schema
    assert not accepts(compiler, tokenizer, constraint, wrong, ended=False)
    assert not accepts(compiler, tokenizer, constraint, "<|channel|>final<|message|>Hi<|end|>", ended=False)


def test_a_response_format_holds_the_final_channel(compiler, tokenizer):
    reading = output_format(tokenizer).reading("", tool_request(None, None))
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    constraint = reading.constraint(OutputConstraint("response_format", "json", schema))
    assert constraint.param == "response_format" and constraint.kind == "grammar"
    assert accepts(compiler, tokenizer, constraint, ANALYSIS + '<|start|>assistant<|channel|>final<|message|>'
                                                              '{"city": "Paris"}')
    assert not accepts(compiler, tokenizer, constraint, '<|channel|>final<|message|>{"town": "Paris"}', ended=False)
    assert not accepts(compiler, tokenizer, constraint, CALL.removeprefix("<|start|>assistant"), ended=False)
    with pytest.raises(APIError) as refused:
        reading.constraint(OutputConstraint("response_format", "json", {"type": "strin"}))
    assert refused.value.status == 400 and refused.value.param == "response_format"
