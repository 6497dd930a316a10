"""Chat templates without a system role: Gemma 2's refuses one ("System role not supported"), Mistral's oldest
insist on user/assistant turns only.

Such a model still gets its instructions: a system message is merged into the user turn after it,
its text, a blank line, then the user's, which is what Gemma 3's own template does with a leading
system message (its authors' answer for the same model family). Whether a template has a system
role is found once per model by rendering a short chat with and without one: a template that
refuses only the former has none.
"""

SYSTEM_ROLES = ("system", "developer")
_PROBE = [{"role": "user", "content": "?"}]


def refuses_system(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders a chat without a system message and refuses one with it."""

    def renders(messages: list[dict]) -> bool:
        try:
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception:  # the template's raise_exception, or anything else it cannot render
            return False
        return True

    return renders(_PROBE) and not renders([{"role": "system", "content": "!"}, *_PROBE])


def merge_system(messages: list[dict]) -> list[dict]:
    """Each run of system messages joined into the user message after it (a user message of its own where an
    assistant's follows, or none)."""
    out, pending = [], []
    for message in messages:
        if message["role"] in SYSTEM_ROLES:
            if message.get("content"):
                pending.append(message["content"])
            continue
        if pending:
            merged = "\n\n".join(pending)
            if message["role"] == "user":
                message = {**message, "content": f"{merged}\n\n{message.get('content') or ''}"}
            else:
                out.append({"role": "user", "content": merged})
            pending = []
        out.append(message)
    if pending:
        out.append({"role": "user", "content": "\n\n".join(pending)})
    return out
