"""Gemma's and Mistral Small 3.2's real chat templates (templates/) through the output format: a system message where
the template has no system role, tools, and the history of a call sent back; Mistral's tekken v11+ calls
(`[TOOL_CALLS]name[ARGS]{...}`) detected, held by the grammar and read back, token by token."""

import json
import re

import pytest

from appliance.serving.formats import output_format
from appliance.serving.formats.tools.formats import ToolFormat
from appliance.serving.formats.tools.functions import tool_request
from tests.appliance.serving.formats.templates import real_template

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
CALL = {"id": "call_0123456789abcdef", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
HISTORY = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"},
           {"role": "assistant", "content": "", "tool_calls": [CALL]},
           {"role": "tool", "tool_call_id": CALL["id"], "content": "sunny"}]
MISTRAL_TOKENS = ["[TOOL_CALLS]", "[ARGS]", "[CALL_ID]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[INST]", "[/INST]",
                  "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_RESULTS]", "[TOOL_CONTENT]", "[/TOOL_RESULTS]"]


def with_template(default_model_path, name: str, special: list[str] = ()):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_path)
    if special:
        tokenizer.add_special_tokens({"additional_special_tokens": list(special)})
    tokenizer.chat_template = real_template(name)
    return tokenizer


def render(tokenizer, messages, tools=None, choice=None):
    fmt = output_format(tokenizer)
    messages, arguments = fmt.conversation(messages, tool_request(tools, choice))
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **arguments)


@pytest.mark.parametrize("name", ["gemma-2", "gemma-3"])
def test_gemma_takes_a_system_message_into_the_first_user_turn(default_model_path, name):
    """Gemma 3's template merges it itself; Gemma 2's refuses it, and we merge it the same way."""
    tokenizer = with_template(default_model_path, name)
    assert output_format(tokenizer).system_merged is (name == "gemma-2")
    prompt = render(tokenizer, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert prompt.endswith("<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n")


@pytest.mark.parametrize("name", ["gemma-2", "gemma-3"])
def test_gemma_with_tools_and_a_call_sent_back(default_model_path, name):
    tokenizer = with_template(default_model_path, name)
    assert output_format(tokenizer).tools is ToolFormat.GENERIC  # its template renders no tools: ours describe them
    prompt = render(tokenizer, HISTORY, [WEATHER])
    first_turn = prompt.split("<end_of_turn>")[0]
    assert "Be brief." in first_turn and "get_weather" in first_turn and "Weather in Paris?" in first_turn
    assert '<start_of_turn>model\n{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}' in prompt
    assert "sunny" in prompt.split("<start_of_turn>")[-2]  # the result comes back in the user turn before ours


@pytest.fixture(scope="module")
def mistral(default_model_path):
    return with_template(default_model_path, "mistral-small-3.2", MISTRAL_TOKENS)


def test_mistral_small_3_2_is_the_args_format_and_takes_its_history(mistral):
    fmt = output_format(mistral)
    assert fmt.tools is ToolFormat.MISTRAL_ARGS and not fmt.system_merged
    assert fmt.tool_marker_ids == set(mistral.convert_tokens_to_ids(["[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"]))
    prompt = render(mistral, HISTORY, [WEATHER])
    assert prompt.startswith("<|im_start|>[SYSTEM_PROMPT]Be brief.[/SYSTEM_PROMPT][AVAILABLE_TOOLS]")
    id_ = "([A-Za-z0-9]{9})"
    found = re.search(re.escape("[TOOL_CALLS]get_weather[CALL_ID]") + id_ + re.escape('[ARGS]{"city": "Paris"}<|im_end|>'
                                                                                     "[TOOL_RESULTS]")
                      + id_ + re.escape("[TOOL_CONTENT]sunny[/TOOL_RESULTS]"), prompt)
    assert found and found.group(1) == found.group(2)  # the call and its result keep one 9-character id


def test_mistral_args_calls_are_held_and_read_back_token_by_token(mistral):
    import xgrammar

    from appliance.serving.formats.tools.parsers import parse

    fmt = output_format(mistral)
    constraint = fmt.reading("", tool_request([WEATHER], "required")).constraint(None)
    info = xgrammar.TokenizerInfo.from_huggingface(mistral, vocab_size=len(mistral))
    matcher = xgrammar.GrammarMatcher(xgrammar.GrammarCompiler(info).compile_grammar(constraint.value))
    answer = '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}'
    ids = mistral.encode(answer, add_special_tokens=False)
    assert mistral.convert_tokens_to_ids("[ARGS]") in ids  # the markers come as the special tokens they are
    assert all(matcher.accept_token(i) for i in ids) and matcher.is_completed()
    text = mistral.decode(ids)  # as the detokenizer gives it, the markers kept
    assert [(c.name, json.loads(c.arguments)) for c in parse(fmt.tools, text)[1]] == [("get_weather", {"city": "Paris"})]
    wrong = xgrammar.GrammarMatcher(xgrammar.GrammarCompiler(info).compile_grammar(constraint.value))
    assert not wrong.accept_string('[TOOL_CALLS]get_weather[ARGS]{"town"')
