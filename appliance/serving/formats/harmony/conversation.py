"""A chat as gpt-oss's chat template takes it (its chat_template.jinja, as OpenAI publishes it with the model).

What the template expects, and what we hand it:
- One developer message, first: the template turns it into harmony's developer message
  (`# Instructions`) and ignores any later system message. Every system and developer message is
  joined into that one, in order, so no instruction is dropped.
- An assistant turn's reasoning in `thinking` (our messages carry it as `reasoning_content`). The
  template keeps it only where harmony does: for a call whose turn has not ended in a final answer.
- One call per assistant message (the template reads `tool_calls[0]`), its arguments an object (it
  writes them with `tojson`). A turn with parallel calls becomes one message per call, each followed
  by the results that answer it (by `tool_call_id`), as gpt-oss itself calls, one at a time; the
  template names each result after the call before it.
- A call turn's text: the template has one slot for it, the analysis message before the call, so
  its reasoning and its content go there together (it refuses a turn with both).
"""

from appliance.serving.formats.tools.history import native_history

INSTRUCTION_ROLES = ("system", "developer")


def harmony_messages(messages: list[dict]) -> list[dict]:
    messages = native_history(messages)  # arguments as objects
    instructions = [m["content"] for m in messages if m["role"] in INSTRUCTION_ROLES and m.get("content")]
    out = [{"role": "developer", "content": "\n\n".join(instructions)}] if instructions else []
    rest = [m for m in messages if m["role"] not in INSTRUCTION_ROLES]
    i = 0
    while i < len(rest):
        message = rest[i]
        i += 1
        if message["role"] != "assistant":
            out.append(message)
            continue
        if not message.get("tool_calls"):
            out.append(_answer(message))
            continue
        results = []
        while i < len(rest) and rest[i]["role"] == "tool":
            results.append(rest[i])
            i += 1
        out += _calls(message, results)
    return out


def _answer(message: dict) -> dict:
    answer = {"role": "assistant", "content": message.get("content") or ""}
    if message.get("reasoning_content"):
        answer["thinking"] = message["reasoning_content"]
    return answer


def _calls(message: dict, results: list[dict]) -> list[dict]:
    """One message per call, each followed by its results; results that answer no call of the turn come last."""
    text = "\n\n".join(part for part in (message.get("reasoning_content"), message.get("content")) if part)
    out = []
    for k, call in enumerate(message["tool_calls"]):
        single = {"role": "assistant", "tool_calls": [call]}
        if k == 0 and text:
            single["thinking"] = text
        out.append(single)
        out += [r for r in results if r.get("tool_call_id") == call.get("id")]
    answered = {call.get("id") for call in message["tool_calls"]}
    return out + [r for r in results if r.get("tool_call_id") not in answered]
