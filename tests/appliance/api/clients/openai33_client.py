"""Run under openai 3.3.x and instructor (openai33.lock) by test_openai_streams.py against a live server: prints, as
one JSON object, what the openai SDK's chat stream helper and instructor's create_partial made of its streams.

    python openai33_client.py BASE_URL API_KEY MODEL TOOLS_JSON
"""

import json
import sys

import instructor
import openai
from pydantic import BaseModel, Field


class Flight(BaseModel):
    origin: str = Field(pattern="^[A-Z]{3}$")
    destination: str = Field(pattern="^[A-Z]{3}$")
    passengers: int = Field(ge=1, le=9)


def main(base_url: str, api_key: str, model: str, tools: list) -> dict:
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
    question = [{"role": "user", "content": "Book me a flight"}]
    with client.chat.completions.stream(model=model, messages=question, tools=tools, tool_choice="required",
                                        parallel_tool_calls=False, max_tokens=120, temperature=0) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_completion().choices[0]
    partials = instructor.from_openai(client).chat.completions.create_partial(
        model=model, response_model=Flight, messages=question, max_tokens=120, temperature=0, max_retries=0)
    return {
        "openai": openai.__version__,
        "events": events,
        "finish_reason": final.finish_reason,
        "calls": [{"name": c.function.name, "arguments": c.function.arguments} for c in final.message.tool_calls or []],
        "partials": [p.model_dump() for p in partials],
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))))
