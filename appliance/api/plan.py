"""One request's plan: what it asks, then the model it was admitted to, its prompts, its constraint and how its
output is read. It travels between the stages (route → plan → admission lease → render → generate → format →
account); none of them changes it.

Each API's module turns its request body into an `Ask` (its checks are 400s naming the body's
fields, made before admission); `plan_request` puts the Ask on the admitted model: its images read
(api/images.py; a model that takes none refuses them), a chat rendered by the model's template and its
output format (serving/render.py), plain prompts as they are.
"""

import json
from dataclasses import dataclass

from appliance.api.images import ImageLimits, ImageRef, RequestImage, read_images
from appliance.api.sampling import Sampling, Scheduling
from appliance.errors import invalid
from appliance.serving.constraint import OutputConstraint
from appliance.serving.formats.output import PLAIN, OutputReading
from appliance.serving.formats.tools.functions import NO_TOOLS, ToolRequest
from appliance.serving.render import render_chat
from appliance.serving.served_model import ModelLease, ServedModel


@dataclass(frozen=True)
class Ask:
    """What a generation request asks, in no API's words."""

    model: str
    sampling: Sampling
    prompt_param: str  # the body's field that holds the prompt, for the engine's 400s ("messages", "prompt"…)
    max_tokens: int | None = None  # None: up to the model's context
    n: int = 1  # choices per prompt
    stream: bool = False
    include_usage: bool = False  # a usage chunk ends the stream
    logprobs: int | None = None  # alternatives per output token (0: the sampled token's only); None: no logprobs
    prompt_logprobs: int | None = None
    constraint: OutputConstraint | None = None  # the request's own: response_format, structured_outputs, guided_*
    messages: tuple[dict, ...] | None = None  # a chat, in the shape chat templates take
    tools: ToolRequest = NO_TOOLS
    reasoning_effort: str | None = None  # for a chat template that takes one
    prompts: tuple[str | list[int], ...] = ()  # plain prompts, when there are no messages
    priority: int | None = None  # the request's own (lower runs first); None: its key's
    images: tuple[ImageRef, ...] = ()  # the chat's images, in the order their placeholders come in the prompt

    def __post_init__(self):
        if self.tools.active and self.constraint is not None:
            param = self.constraint.param
            raise invalid(param, f"{param} cannot be combined with tools unless tool_choice is \"none\"; drop one of them")


@dataclass(frozen=True)
class EngineJob:
    """One engine request of a plan: choice `index` of prompt `prompt_index`."""

    prompt_index: int
    prompt: str | list[int]
    params: object  # engine.SamplingParams


@dataclass(frozen=True)
class RequestPlan:
    ask: Ask
    lease: ModelLease
    prompts: tuple[str | list[int], ...]  # what the engine gets: the rendered chat, or the plain prompts
    constraint: OutputConstraint | None  # the request's or the tools', held after the reasoning where it must be
    reading: OutputReading  # how each choice's text becomes events
    images: tuple[RequestImage, ...] = ()  # the prompt's images, read

    @property
    def pictures(self) -> tuple:
        """The prompt's images as the engine takes them: decoded (PIL images)."""
        return tuple(image.picture for image in self.images)

    @property
    def served(self) -> ServedModel:
        return self.lease.served

    @property
    def prompt_text(self) -> str:
        """The prompt for the request log."""
        if len(self.prompts) == 1 and isinstance(self.prompts[0], str):
            return self.prompts[0]
        return json.dumps(self.prompts[0] if len(self.prompts) == 1 else list(self.prompts))

    @property
    def constraint_label(self) -> str | None:
        """For the request log: what held the output."""
        return self.ask.tools.label or (self.constraint.label if self.constraint is not None else None)

    @property
    def param_names(self) -> dict[str, str]:
        """The request fields behind the engine's parameter names, for the engine's 400s."""
        names = {"prompt": self.ask.prompt_param}
        if self.constraint is not None:
            names["structured_output"] = self.constraint.param
        return names

    def jobs(self, retry_after_s: float, key: Scheduling) -> list[EngineJob]:
        """n engine requests for each prompt, scheduled as the key says unless the request gave its priority."""
        ask = self.ask
        max_tokens = ask.max_tokens or self.served.max_model_len
        scheduling = key if ask.priority is None else Scheduling(ask.priority, key.group, key.weight)
        return [EngineJob(p, prompt, ask.sampling.params(j, max_tokens, ask.logprobs, self.constraint,
                                                           self.reading.kept_token_ids, ask.prompt_logprobs,
                                                           retry_after_s, self.param_names, scheduling))
                for p, prompt in enumerate(self.prompts) for j in range(ask.n)]


async def plan_request(ask: Ask, lease: ModelLease, limits: ImageLimits) -> RequestPlan:
    """The Ask on its admitted model: its images read, a chat rendered (400s for messages that do not fit the
    template), or the plain prompts."""
    if ask.messages is None:
        return RequestPlan(ask, lease, ask.prompts, ask.constraint, PLAIN)
    images = await read_request_images(ask.images, lease.served, limits)
    prompt, reading = await render_chat(lease.served, list(ask.messages), ask.tools, ask.reasoning_effort)
    return RequestPlan(ask, lease, (prompt,), reading.constraint(ask.constraint), reading, images)


async def read_request_images(refs: tuple[ImageRef, ...], served: ServedModel,
                              limits: ImageLimits) -> tuple[RequestImage, ...]:
    """A request's images read for the model it was admitted to; a 400 naming the first when the model takes none."""
    if not refs:
        return ()
    if not served.engine.takes_images:
        param = refs[0].param
        raise invalid(param, f"{param}: the model {served.name} takes no images (GET /v1/models lists each model's "
                             "input_modalities); send text, or ask a model that takes images")
    return await read_images(refs, limits)
