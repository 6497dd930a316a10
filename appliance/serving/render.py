"""Rendering, between admission and generation: a chat to the admitted model's prompt text, through its chat
template and its output format (how it is shown tools; how what it writes is read back)."""

import asyncio
from appliance.errors import APIError, invalid
from appliance.serving.formats.output import OutputReading
from appliance.serving.formats.tools.functions import ToolRequest
from appliance.serving.served_model import ServedModel


async def render_chat(served: ServedModel, messages: list[dict], tools: ToolRequest,
                      effort: str | None = None) -> tuple[str, OutputReading]:
    """The prompt (the model's own chat template, off the event loop: templates can be slow), and how the
    output of this prompt is read. `effort`: the request's reasoning effort, where the model's template takes
    none, or not this one, a 400 naming `reasoning_effort`."""
    tokenizer = served.engine.tokenizer
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise APIError(400, "this model has no chat template; use /v1/completions", param="messages")
    fmt = served.output_format
    if effort is not None and effort not in fmt.reasoning_efforts:
        if not fmt.reasoning_efforts:
            raise invalid("reasoning_effort", "reasoning_effort: this model's chat template takes no reasoning effort "
                                              "(the model decides whether it reasons); drop the field")
        raise invalid("reasoning_effort", f"reasoning_effort: this model takes {', '.join(fmt.reasoning_efforts)}; "
                                          f"got {effort!r}")
    messages, template_args = fmt.conversation(messages, tools, effort)

    def render():
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **template_args)

    try:
        prompt = await asyncio.to_thread(render)
    except Exception as e:  # jinja raise_exception (role order...), template errors
        raise APIError(400, f"the messages do not fit the model's chat template: {e}", param="messages") from None
    return prompt, fmt.reading(prompt, tools)
