"""Rendering, between admission and generation: chat messages to the admitted model's prompt text."""

import asyncio

from appliance.errors import APIError
from appliance.serving.served_model import ServedModel


async def render_chat(served: ServedModel, messages: list[dict], **template_args) -> str:
    """The model's own chat template over `messages` (off the event loop: templates can be slow)."""
    tokenizer = served.engine.tokenizer
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise APIError(400, "this model has no chat template; use /v1/completions", param="messages")

    def render():
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **template_args)

    try:
        return await asyncio.to_thread(render)
    except Exception as e:  # jinja raise_exception (role order...), template errors
        raise APIError(400, f"the messages do not fit the model's chat template: {e}", param="messages") from None
