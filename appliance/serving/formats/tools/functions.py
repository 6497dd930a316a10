"""The request's `tools` and `tool_choice`, checked once and turned into plain values.

Everything downstream (the prompt, the grammar, the parser) trusts what comes out of here, so a
bad definition is refused with a 400 that names the parameter and says how to fix it, before
anything is rendered. Names are held to OpenAI's pattern, which also makes them safe to put
verbatim into a grammar.
"""

import re
from dataclasses import dataclass
from typing import Literal

from appliance.errors import APIError, invalid

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_NO_PARAMETERS = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class Function:
    name: str
    description: str | None
    parameters: dict  # a JSON schema of type object


@dataclass(frozen=True)
class ToolChoice:
    """`mode` "function" means the one function `name`."""

    mode: Literal["none", "auto", "required", "function"]
    name: str | None = None


@dataclass(frozen=True)
class ToolRequest:
    """What one request says about tools, checked: the functions, the choice, whether calls may be parallel, and
    the definitions as the request gave them (OpenAI's shape, which tool-aware chat templates take)."""

    functions: tuple[Function, ...] = ()
    choice: ToolChoice = ToolChoice("none")
    parallel: bool = True
    definitions: tuple[dict, ...] = ()

    @property
    def active(self) -> bool:
        """Whether the model may call a function (tool_choice is not "none")."""
        return self.choice.mode != "none" and bool(self.functions)

    @property
    def choice_field(self) -> str | dict:
        """The choice as OpenAI's `tool_choice` field says it."""
        if self.choice.mode == "function":
            return {"type": "function", "function": {"name": self.choice.name}}
        return self.choice.mode

    @property
    def label(self) -> str | None:
        """For the request log: which constraint held the answer."""
        return f"tools:{self.choice.mode}" if self.active else None


NO_TOOLS = ToolRequest()


def tool_request(tools: list[dict] | None, tool_choice: str | dict | None, parallel: bool = True) -> ToolRequest:
    """A request's tools checked (400s name `tools` or `tool_choice`)."""
    functions, choice = check_tools(tools, tool_choice)
    return ToolRequest(tuple(functions), choice, parallel, tuple(tools or ()))


def check_tools(tools: list | None, tool_choice: str | dict | None) -> tuple[list[Function], ToolChoice]:
    """The functions and the choice of a chat request, or an APIError (400) naming what is wrong.

    Defaults as OpenAI's: "auto" with tools, "none" without.
    """
    if tools is None:
        if tool_choice is not None:
            raise invalid(
                "tool_choice", "tool_choice is only allowed when tools are given; add tools or drop tool_choice"
            )
        return [], ToolChoice("none")
    if not isinstance(tools, list):
        raise invalid("tools", "tools must be a list of {\"type\": \"function\", \"function\": {...}} objects")
    functions = [_function(i, tool) for i, tool in enumerate(tools)]
    seen: set[str] = set()
    for i, function in enumerate(functions):
        if function.name in seen:
            raise invalid(
                "tools", f"tools[{i}]: the function name {function.name!r} is used twice; names must be unique"
            )
        seen.add(function.name)
    if not functions and tool_choice not in (None, "none"):
        raise invalid("tool_choice", "tool_choice needs at least one tool; add tools or drop tool_choice")
    return functions, _choice(tool_choice, seen)


def _function(i: int, tool) -> Function:
    where = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type") != "function":
        got = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
        raise invalid("tools", f"{where}: only tools of type \"function\" are supported (got {got!r})")
    function = tool.get("function")
    if not isinstance(function, dict):
        raise invalid("tools", f"{where}.function is missing; give {{\"name\": ..., \"parameters\": {{...}}}}")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise invalid("tools", f"{where}.function.name is missing; every function needs a name")
    if not _NAME.match(name):
        raise invalid(
            "tools", f"{where}.function.name {name!r} is not valid: use 1 to 64 letters, digits, '_' or '-'"
        )
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise invalid("tools", f"{where}.function.description must be a string")
    parameters = function.get("parameters", _NO_PARAMETERS)
    if parameters is None:
        parameters = _NO_PARAMETERS
    if not isinstance(parameters, dict):
        raise invalid(
            "tools", f"{where}.function.parameters must be a JSON schema object such as {_NO_PARAMETERS}"
        )
    if parameters.get("type", "object") != "object":
        raise invalid(
            "tools",
            f"{where}.function.parameters must describe an object (\"type\": \"object\"), "
            f"got \"type\": {parameters.get('type')!r}",
        )
    if not isinstance(parameters.get("properties", {}), dict):
        raise invalid("tools", f"{where}.function.parameters.properties must be an object of named schemas")
    if not isinstance(parameters.get("required", []), list):
        raise invalid("tools", f"{where}.function.parameters.required must be a list of property names")
    return Function(name, description, {"type": "object", **parameters})


def _choice(tool_choice, names: set[str]) -> ToolChoice:
    if tool_choice is None:
        return ToolChoice("auto" if names else "none")
    if tool_choice in ("none", "auto", "required"):
        return ToolChoice(tool_choice)
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise invalid(
                "tool_choice",
                "tool_choice.function.name is missing: give {\"type\": \"function\", \"function\": {\"name\": ...}}",
            )
        if name not in names:
            known = ", ".join(sorted(names))
            raise invalid(
                "tool_choice", f"tool_choice names the function {name!r}, which is not in tools (known: {known})"
            )
        return ToolChoice("function", name)
    raise invalid(
        "tool_choice",
        "tool_choice must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
    )


def schema_error(i: int, function: Function, reason: str) -> APIError:
    """A function whose parameters schema the grammar engine cannot use."""
    return invalid(
        "tools", f"tools[{i}].function.parameters ({function.name}) cannot be enforced: {reason}"
    )
