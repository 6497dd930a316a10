"""Bad tool definitions and tool choices are 400s that name the parameter and say what to do."""

import pytest

from appliance.serving.formats.tools.functions import Function, ToolChoice, check_tools
from appliance.serving.formats.tools.generic import messages_with_tools
from appliance.errors import APIError


def tool(name="f", **function):
    return {"type": "function", "function": {"name": name, **function}}


def test_good_tools_become_functions_and_a_choice():
    functions, choice = check_tools(
        [tool("f", description="Does f.", parameters={"properties": {"x": {"type": "string"}}}), tool("g")], None
    )
    assert functions == [
        Function("f", "Does f.", {"type": "object", "properties": {"x": {"type": "string"}}}),
        Function("g", None, {"type": "object", "properties": {}}),
    ]
    assert choice == ToolChoice("auto")
    assert check_tools([tool("f")], {"type": "function", "function": {"name": "f"}})[1] == ToolChoice("function", "f")
    assert check_tools([tool("f")], "required")[1] == ToolChoice("required")
    assert check_tools(None, None) == ([], ToolChoice("none"))
    assert check_tools([], None) == ([], ToolChoice("none"))


@pytest.mark.parametrize(
    "tools, tool_choice, param, message",
    [
        ([{"type": "retrieval"}], None, "tools", "tools[0]: only tools of type \"function\" are supported (got 'retrieval')"),
        (["f"], None, "tools", "tools[0]: only tools of type \"function\" are supported (got 'str')"),
        ({"type": "function"}, None, "tools", "tools must be a list of"),
        ([{"type": "function"}], None, "tools", "tools[0].function is missing"),
        ([tool(None)], None, "tools", "tools[0].function.name is missing; every function needs a name"),
        ([tool("f"), tool("get weather")], None, "tools", "tools[1].function.name 'get weather' is not valid: use 1 to 64"),
        ([tool("f", parameters="{}")], None, "tools", "tools[0].function.parameters must be a JSON schema object"),
        ([tool("f", parameters={"type": "array"})], None, "tools",
         "tools[0].function.parameters must describe an object (\"type\": \"object\"), got \"type\": 'array'"),
        ([tool("f", parameters={"properties": []})], None, "tools", "tools[0].function.parameters.properties must be"),
        ([tool("f", parameters={"required": "x"})], None, "tools", "tools[0].function.parameters.required must be a list"),
        ([tool("f", description=3)], None, "tools", "tools[0].function.description must be a string"),
        ([tool("f"), tool("g"), tool("f")], None, "tools",
         "tools[2]: the function name 'f' is used twice; names must be unique"),
        ([tool("f"), tool("g")], {"type": "function", "function": {"name": "h"}}, "tool_choice",
         "tool_choice names the function 'h', which is not in tools (known: f, g)"),
        ([tool("f")], {"type": "function"}, "tool_choice", "tool_choice.function.name is missing"),
        ([tool("f")], "any", "tool_choice", 'tool_choice must be "none", "auto", "required" or'),
        ([tool("f")], {"type": "allowed_tools"}, "tool_choice", 'tool_choice must be "none", "auto", "required" or'),
        (None, "auto", "tool_choice", "tool_choice is only allowed when tools are given; add tools or drop tool_choice"),
        (None, "none", "tool_choice", "tool_choice is only allowed when tools are given"),
        ([], "required", "tool_choice", "tool_choice needs at least one tool"),
    ],
)
def test_refusals(tools, tool_choice, param, message):
    with pytest.raises(APIError) as caught:
        check_tools(tools, tool_choice)
    error = caught.value
    assert (error.status, error.param, error.code) == (400, param, "invalid_parameter")
    assert error.message.startswith(message)
    assert error.body()["error"]["type"] == "invalid_request_error"


def test_the_generic_prompt_refuses_bad_tools_too():
    with pytest.raises(APIError) as caught:
        messages_with_tools([{"role": "user", "content": "hi"}], [tool("f"), tool("f")], "auto")
    assert caught.value.param == "tools"
