"""openai-agents runs a tool-using agent over the Responses API.

The model is tools_server's tiny-agent: under its Hermes tool template it answers ` It is
sunny.`, except where a grammar makes it write something else. The agent asks for one call
(tool_choice "required", parallel_tool_calls false; openai-agents resets the choice to auto once
the tool was called), so the grammar writes one valid call of the one tool, whose only argument is
one of two cities, and ends the answer there; with the tool's result the model answers. The agent
then goes on from its last response with only the new turn (previous_response_id).
"""

import asyncio
from typing import Literal

import openai
import pytest


@pytest.fixture(scope="module")
def agent_model(tools_server):
    from agents import set_tracing_disabled
    from agents.models.openai_responses import OpenAIResponsesModel

    set_tracing_disabled(True)  # no traces sent anywhere
    client = openai.AsyncOpenAI(base_url=tools_server.base_url + "/v1", api_key=tools_server.key, max_retries=0)
    return OpenAIResponsesModel(model="tiny-agent", openai_client=client)


def test_an_agent_calls_its_tool_once_then_answers_and_goes_on(agent_model, tools_server):
    from agents import Agent, ModelSettings, Runner, function_tool

    cities = []

    @function_tool
    def get_weather(city: Literal["Paris", "Oslo"]) -> str:
        """The weather in a city now."""
        cities.append(city)
        return "18 C and sunny"

    agent = Agent(name="weather", instructions="Answer questions about the weather.", tools=[get_weather],
                  model=agent_model, model_settings=ModelSettings(tool_choice="required", parallel_tool_calls=False,
                                                                  max_tokens=120, temperature=0))
    async def two_runs():  # one event loop: the client's connections belong to it
        first = await Runner.run(agent, "What is the weather in Paris?", max_turns=3)
        return first, await Runner.run(agent, "And tomorrow?", previous_response_id=first.last_response_id,
                                       max_turns=3)

    result, follow = asyncio.run(two_runs())
    for run in (result, follow):  # each run: one call of the tool, its result, then the answer
        assert [item.type for item in run.new_items] == ["tool_call_item", "tool_call_output_item",
                                                         "message_output_item"]
        assert run.final_output == " It is sunny."
    assert len(cities) == 2 and set(cities) <= {"Paris", "Oslo"}
    first, last = result.raw_responses[0].usage.input_tokens, follow.raw_responses[0].usage.input_tokens
    assert last > first  # only the new turn was sent; the stored response brought the rest
