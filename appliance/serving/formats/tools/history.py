"""The history as a tool-aware chat template expects it (Hermes, Llama 3 and Mistral templates).

OpenAI clients send an earlier call's arguments as JSON text; the templates write them with
`tojson` and would print that text as a quoted string. vLLM turns them back into objects
before rendering, and so do we. Mistral's templates also refuse any call id that is not 9
letters or digits, so for that format each id (and the `tool_call_id` of its result) is
mapped to one, the same every time. Everything else passes through untouched.
"""

import hashlib
import json
import re

from appliance.serving.formats.tools.formats import ToolFormat

_MISTRAL_ID = re.compile(r"^[A-Za-z0-9]{9}$")


def native_history(messages: list[dict], fmt: ToolFormat | None = None) -> list[dict]:
    """The messages with each assistant call's `arguments` as an object where it parses."""
    fix_id = _mistral_id if fmt in (ToolFormat.MISTRAL, ToolFormat.MISTRAL_ARGS) else (lambda call_id: call_id)
    out = []
    for message in messages:
        if message.get("role") == "assistant" and message.get("tool_calls"):
            calls = [_with_object_arguments(call) for call in message["tool_calls"]]
            calls = [{**call, "id": fix_id(call["id"])} if "id" in call else call for call in calls]
            message = {**message, "tool_calls": calls}
        elif message.get("role") == "tool" and "tool_call_id" in message:
            message = {**message, "tool_call_id": fix_id(message["tool_call_id"])}
        out.append(message)
    return out


def _with_object_arguments(call: dict) -> dict:
    function = call.get("function") or {}
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return call
        return {**call, "function": {**function, "arguments": arguments}}
    return call


def _mistral_id(call_id):
    if not isinstance(call_id, str) or _MISTRAL_ID.match(call_id):
        return call_id
    return hashlib.sha256(call_id.encode()).hexdigest()[:9]
