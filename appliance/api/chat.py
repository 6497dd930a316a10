"""POST /v1/chat/completions: messages (and tools) through the model's chat template, then generation.

The output may be held to a grammar: response_format (or vLLM's structured_outputs), or the tools'
call format; a tool-call parser turns the text into `tool_calls`.
"""

from starlette.requests import Request
from starlette.responses import Response

from appliance.api import formatting as fmt
from appliance.api.generation import generate_response
from appliance.api.reasoning import model_reasoning
from appliance.api.request import admit, read_request
from appliance.api.sampling import param_names, sampling_params
from appliance.api.schemas import ChatCompletionRequest
from appliance.api.structured import requested_constraint
from appliance.api.tools.plan import plan_tools
from appliance.serving.render import render_chat
from appliance.serving.service import Service


async def chat_completions(request: Request) -> Response:
    req = await read_request(request, ChatCompletionRequest)
    ctx, jobs, names, top, parser, reasoning = await prepare_chat(request, req, "chatcmpl", "chat")
    return await generate_response(request, ctx, jobs, names, req, top, fmt.CHAT, parser=parser, reasoning=reasoning)


async def prepare_chat(request: Request, req: ChatCompletionRequest, id_prefix: str, endpoint: str):
    """Admission, the rendered prompt and the engine jobs of a chat request (the Responses API's too):
    (context, jobs, param names, top logprobs, tool-call parser factory, reasoning parser factory or None)."""
    service: Service = request.app.state.service
    constraint = requested_constraint(req)
    ctx = await admit(request, id_prefix, endpoint, req.model)
    tools = plan_tools(ctx.served, req, constraint)
    messages = tools.messages([m.to_template() for m in req.messages])
    ctx.prompt_text = await render_chat(ctx.served, messages, **tools.template_args())
    constraint = constraint or tools.constraint()
    ctx.constraint = tools.label() or (constraint.label if constraint is not None else None)
    fmt_reasoning = model_reasoning(ctx.served)
    thinking = fmt_reasoning.plan(ctx.prompt_text) if fmt_reasoning is not None else None
    if constraint is not None and thinking is not None:
        constraint = constraint.after(thinking.grammar_after)  # the grammar holds the answer, not the reasoning
    top = (req.top_logprobs or 0) if req.logprobs else None
    max_tokens = req.max_completion_tokens or req.max_tokens or ctx.served.max_model_len
    retry = service.config.retry_after_s
    markers = tools.marker_token_ids(ctx.served.engine.tokenizer)
    if thinking is not None:
        markers |= thinking.marker_token_ids()
    jobs = [(0, ctx.prompt_text, sampling_params(req, max_tokens, top, i, retry, constraint, markers))
            for i in range(req.n)]
    return (ctx, jobs, param_names(constraint, "messages"), top, tools.parser,
            thinking.parser if thinking is not None else None)
