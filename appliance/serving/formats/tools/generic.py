"""Tool calling for a model whose chat template knows nothing of tools: our own generic format.

The tools go into the system message as text (name, description, JSON schema of the
parameters), and the model answers with one JSON object, as llama.cpp's server does for such
models. The answer is exactly one of:

    {"content": "<the reply to the user>"}
    {"tool_calls": [{"name": "<function name>", "arguments": {<arguments>}}, ...]}

`answer_schema` is that shape as a JSON schema for the grammar (each call's arguments checked
against its own function's parameters); `GenericParser` reads it back. The history is rendered
into plain role/content messages, since such a template takes nothing else: an assistant's
earlier calls as the same JSON object it is asked to write, tool results as user messages.
"""

import json

from appliance.serving.formats.tools.functions import Function, ToolChoice, check_tools


def messages_with_tools(
    messages: list[dict], tools: list | None, tool_choice=None, parallel_tool_calls: bool = True
) -> list[dict]:
    """The messages to hand a template without tool support.

    With tool_choice "none" (or no tools) the functions are not described, but earlier calls
    and results are still rendered as text. Raises APIError for bad tools.
    """
    functions, choice = check_tools(tools, tool_choice)
    rendered = _plain_history(messages)
    if choice.mode == "none":
        return rendered
    text = system_text(functions, choice, parallel_tool_calls)
    if rendered and rendered[0]["role"] == "system":
        first = _text(rendered[0].get("content"))
        return [{**rendered[0], "content": f"{first}\n\n{text}" if first else text}] + rendered[1:]
    return [{"role": "system", "content": text}] + rendered


def system_text(functions: list[Function], choice: ToolChoice, parallel_tool_calls: bool = True) -> str:
    """The description of the functions and of the answer format, for the system message."""
    lines = ["You can call functions to answer. The functions you can call:", ""]
    for function in functions:
        lines.append(f"- {function.name}: {function.description or '(no description)'}")
        lines.append(f"  arguments (JSON schema): {json.dumps(function.parameters, ensure_ascii=False)}")
    calls = '{"tool_calls": [{"name": "<function name>", "arguments": {<arguments by its schema>}}]}'
    reply = '{"content": "<your reply>"}'
    lines += ["", "Answer with exactly one JSON object and nothing else."]
    if choice.mode == "function":
        lines.append(f"You must call the function {choice.name}, answering: {calls}")
    elif choice.mode == "required":
        lines.append(f"You must call at least one function, answering: {calls}")
    else:
        lines.append(f"To call functions, answer: {calls}")
        lines.append(f"To reply to the user instead, answer: {reply}")
    if parallel_tool_calls and choice.mode != "function":
        lines.append("You may put several calls in the list; their results come back in the next messages.")
    else:
        lines.append("Put exactly one call in the list; its result comes back in the next message.")
    return "\n".join(lines)


def answer_schema(functions: list[Function], choice: ToolChoice, parallel_tool_calls: bool = True) -> dict | None:
    """The JSON schema of the answer, or None when tool_choice is "none" (no constraint)."""
    if choice.mode == "none":
        return None
    chosen = [f for f in functions if choice.mode != "function" or f.name == choice.name]
    calls = {
        "type": "array",
        "items": {"anyOf": [_call_schema(f) for f in chosen]},
        "minItems": 1,
    }
    if not parallel_tool_calls or choice.mode == "function":
        calls["maxItems"] = 1
    with_calls = _object({"tool_calls": calls})
    if choice.mode != "auto":
        return with_calls
    return {"anyOf": [_object({"content": {"type": "string"}}), with_calls]}


def _call_schema(function: Function) -> dict:
    return _object({"name": {"const": function.name}, "arguments": function.parameters})


def _object(properties: dict) -> dict:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def _plain_history(messages: list[dict]) -> list[dict]:
    """Assistant calls and tool results rendered as text; consecutive results in one message."""
    names = {}  # tool_call_id -> function name, to say which call a result answers
    out: list[dict] = []
    for message in messages:
        role = message.get("role")
        content = _text(message.get("content"))
        if role == "assistant" and message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                function = call.get("function", {})
                names[call.get("id")] = function.get("name")
                calls.append({"name": function.get("name"), "arguments": _arguments(function.get("arguments"))})
            answer = json.dumps({"tool_calls": calls}, ensure_ascii=False)
            out.append({"role": "assistant", "content": f"{content}\n{answer}" if content else answer})
        elif role == "tool":
            call_id = message.get("tool_call_id")
            name = names.get(call_id) or message.get("name") or "a function"
            result = f"Result of {name} (call {call_id}):\n{content}"
            if out and out[-1].get("_results"):
                out[-1] = {**out[-1], "content": out[-1]["content"] + "\n\n" + result}
            else:
                out.append({"role": "user", "content": result, "_results": True})
        else:
            out.append(message)
    return [{k: v for k, v in m.items() if k != "_results"} for m in out]


def _text(content) -> str:
    """A message's content as text (OpenAI also allows a list of text parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def _arguments(arguments):
    """OpenAI sends a call's arguments as JSON text; the history shows them as the object."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments if arguments is not None else {}
