"""OpenAI's exact streaming shapes for tool calls, and a cut that leaves no grammar text behind.

Each chunk has one `tool_calls` entry per call index; a call's first entry has its id, type and
name, then its arguments arrive as they are generated; parallel calls have rising indexes. Read by
the clients that need exactly that: the openai SDK's stream helper at the suite's pin and at 3.3.x
(what instructor pins), and instructor's create_partial, whose partial objects must grow. The
random tiny-hermes model never stops calling (every valid call is the grammar's), so max_tokens
always cuts the last of its parallel calls: nothing of that call may reach the content.
"""

import json
import subprocess

import httpx
import jsonschema
import pytest

from tests.appliance.api.clients.client_venv import HERE, client_venv
from tests.appliance.api.test_tools import FLIGHT, SCHEMAS, TOOLS
from tests.appliance.conftest import openai_clients

QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
PARALLEL = dict(tools=TOOLS, tool_choice="required", temperature=1.0, max_tokens=150)


def sse_chunks(server, body: dict) -> list[dict]:
    chunks = []
    with httpx.stream("POST", server.base_url + "/v1/chat/completions", json={**body, "stream": True},
                      headers=server.headers(), timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line[len("data: "):]))
    return chunks


def streamed_calls(chunks: list[dict]) -> list[tuple[str, str]]:
    """(name, arguments) of each call in a chat stream, checking the shape of every delta on the way."""
    calls: dict[int, list[dict]] = {}
    for chunk in chunks:
        delta = chunk["choices"][0]["delta"]
        assert "content" not in delta or delta["content"] in ("", None)  # nothing of a call is content
        entries = delta.get("tool_calls") or []
        assert len({e["index"] for e in entries}) == len(entries), chunk  # one entry per call index
        for entry in entries:
            if entry["index"] not in calls:
                assert entry["index"] == len(calls)  # rising indexes, one call after the other
                assert entry["id"].startswith("call_") and entry["type"] == "function"
                assert entry["function"]["name"] in SCHEMAS
            else:
                assert set(entry) == {"index", "function"} and set(entry["function"]) == {"arguments"}
            calls.setdefault(entry["index"], []).append(entry)
    assert all(len(entries) > 3 for entries in calls.values())  # the arguments came as they were written
    return [(entries[0]["function"]["name"], "".join(e["function"]["arguments"] for e in entries))
            for entries in calls.values()]


def parses(arguments: str) -> bool:
    try:
        json.loads(arguments)
    except ValueError:
        return False
    return True


def test_each_chunk_has_one_entry_per_call_and_the_arguments_stream(tools_server):
    for seed in range(6):  # until max_tokens cuts a call (it may fall between two)
        body = {"model": tools_server.model, "messages": QUESTION, "seed": seed, **PARALLEL}
        chunks = sse_chunks(tools_server, body)
        *complete, last = streamed_calls(chunks)
        assert complete and chunks[-1]["choices"][0]["finish_reason"] == "length"
        for name, arguments in complete:
            jsonschema.validate(json.loads(arguments), SCHEMAS[name])
        if not parses(last[1]):
            break
    else:
        pytest.fail("max_tokens never cut a call")
    whole = httpx.post(tools_server.base_url + "/v1/chat/completions", json=body, headers=tools_server.headers(),
                       timeout=120).json()["choices"][0]
    assert whole["finish_reason"] == "length" and whole["message"]["content"] is None  # the cut call is not text
    for call in whole["message"]["tool_calls"]:  # the complete calls
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[call["function"]["name"]])


def test_the_sdk_stream_helper_sees_the_arguments_grow(tools_server):
    client, _ = openai_clients(tools_server)
    with client.chat.completions.stream(model=tools_server.model, messages=QUESTION, tools=TOOLS, temperature=0,
                                        tool_choice={"type": "function", "function": {"name": "book_flight"}},
                                        max_tokens=120) as stream:
        growing = [event.arguments for event in stream if event.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion().choices[0]
    assert len(growing) > 3 and all(a.startswith(b) for a, b in zip(growing[1:], growing))
    [call] = final.message.tool_calls
    assert final.finish_reason == "tool_calls" and call.function.arguments == growing[-1]
    jsonschema.validate(json.loads(call.function.arguments), FLIGHT)


@pytest.fixture(scope="module")
def openai33(tools_server) -> dict:
    """What openai 3.3.x's stream helper and instructor's create_partial made of the server's streams."""
    python = client_venv("openai33.lock")
    run = subprocess.run([str(python), str(HERE / "openai33_client.py"), tools_server.base_url + "/v1",
                          tools_server.key, tools_server.model, json.dumps(TOOLS[1:])],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


def test_openai_3_3_stream_helper_parses_the_call(openai33):
    assert openai33["openai"].startswith("3.3.")
    assert openai33["events"].count("tool_calls.function.arguments.delta") > 3
    assert "tool_calls.function.arguments.done" in openai33["events"]
    [call] = openai33["calls"]
    assert openai33["finish_reason"] == "tool_calls" and call["name"] == "book_flight"
    jsonschema.validate(json.loads(call["arguments"]), FLIGHT)


def test_instructor_partials_grow_to_the_whole_object(openai33):
    partials = openai33["partials"]
    filled = [sum(value is not None for value in p.values()) for p in partials]
    assert len(set(map(json.dumps, partials))) > 3  # many different partial objects, not one at the end
    assert filled == sorted(filled) and filled[0] < 3 == filled[-1]
    jsonschema.validate(partials[-1], FLIGHT)
