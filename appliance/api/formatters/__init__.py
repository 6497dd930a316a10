"""One formatter per API over the one shared generation: each writes its API's whole answer and its stream
from the choices and their events (appliance.serving.formats.events), and nothing else.

    base         Formatter: body, chunks per engine output, closing chunks, an error mid-stream, SSE framing
    chat         chat.completion and chat.completion.chunk (OpenAI's exact streaming shapes)
    completions  text_completion, echo included
    responses    the Responses API's Response object and its event stream
"""
