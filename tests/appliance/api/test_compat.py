"""What a peer server's OpenAI-API tests found, and fields refused by name instead of being ignored."""

import json

import openai
import pytest

PROMPT = "The quick brown fox"
CHAT = [{"role": "user", "content": "Tell me a story"}]


def refusal(http, path: str, body: dict) -> dict:
    r = http.post(path, json=body)
    assert r.status_code == 400, r.text
    return r.json()["error"]


def test_stream_options_without_stream_is_refused(http, live_server):
    error = refusal(http, "/v1/chat/completions", {"model": live_server.model, "messages": CHAT,
                                                   "stream_options": {"include_usage": True}})
    assert error["param"] == "stream_options" and "stream: true" in error["message"]


def test_seed_past_int64_is_refused(http, live_server):
    error = refusal(http, "/v1/completions", {"model": live_server.model, "prompt": PROMPT, "seed": 2**63})
    assert error["param"] == "seed"


@pytest.mark.parametrize("field,value", [("top_logprobs", False), ("max_tokens", "5"), ("n", 1.5)])
def test_values_of_the_wrong_json_type_are_refused(http, live_server, field, value):
    body = {"model": live_server.model, "messages": CHAT, "logprobs": True, field: value}
    assert refusal(http, "/v1/chat/completions", body)["param"] == field


def test_completion_logprobs_zero_returns_the_sampled_token(client, live_server):
    r = client.completions.create(model=live_server.model, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=0)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 4
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert top == {token: logprob}
    r = client.completions.create(model=live_server.model, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2)
    assert all(1 <= len(top) <= 3 for top in r.choices[0].logprobs.top_logprobs)


def test_chat_stream_chunks_as_openai_sends_them(http, live_server):
    body = {"model": live_server.model, "messages": CHAT, "max_tokens": 4, "temperature": 0, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    deltas = [json.loads(line)["choices"][0] for line in lines[:-1]]
    assert deltas[0]["delta"]["role"] == "assistant"
    assert all("role" not in d["delta"] for d in deltas[1:])  # left out, not null
    assert deltas[-1]["delta"] == {} and deltas[-1]["finish_reason"] == "length"
    assert all(d["finish_reason"] is None for d in deltas[:-1])
    assert sum(bool(d["delta"].get("content")) for d in deltas) == 4


@pytest.mark.parametrize("field,value,reason", [
    ("modalities", ["text", "audio"], "text only"),
    ("audio", {"voice": "alloy", "format": "mp3"}, "text only"),
    ("prediction", {"type": "content", "content": "x"}, "predicted outputs"),
    ("web_search_options", {}, "web search"),
    ("no_such_field", 1, "does not implement"),
])
def test_unimplemented_chat_fields_are_refused_by_name(http, live_server, field, value, reason):
    error = refusal(http, "/v1/chat/completions", {"model": live_server.model, "messages": CHAT, field: value})
    assert error["param"] == field and f"'{field}'" in error["message"] and reason in error["message"]


def test_image_parts_to_a_text_model_are_refused_naming_the_model(client, live_server):
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=live_server.model, max_tokens=2, messages=[
            {"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}])
    assert e.value.body["param"] == "messages.0.content.1.image_url.url"
    assert f"the model {live_server.model} takes no images" in e.value.body["message"]
    models = {m.id: m for m in client.models.list().data}
    assert models[live_server.model].input_modalities == ["text"]


def test_fields_accepted_without_effect(client, live_server):
    r = client.chat.completions.create(model=live_server.model, messages=CHAT, max_tokens=2, user="u-1",
                                       metadata={"app": "test"}, store=False, prompt_cache_key="k",
                                       safety_identifier="s")
    assert r.choices[0].message.content is not None


def test_an_answer_sent_back_as_the_sdk_dumps_it_is_accepted(client, live_server):
    """Apps send `message.model_dump()` back with the next turn: refusal, annotations, audio, function_call…"""
    first = client.chat.completions.create(model=live_server.model, messages=CHAT, max_tokens=3, temperature=0)
    dumped = first.choices[0].message.model_dump()
    assert {"refusal", "annotations", "audio", "function_call"} <= set(dumped)
    history = CHAT + [dumped, {"role": "user", "content": "Go on."}]
    again = client.chat.completions.create(model=live_server.model, messages=history, max_tokens=3, temperature=0)
    assert again.choices[0].message.content is not None
    past = [{"role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot."}], "annotations": [],
             "audio": {"id": "audio_1"}},
            {"role": "assistant", "content": None, "refusal": "No.",
             "function_call": {"name": "lookup", "arguments": "{}"}},
            {"role": "function", "name": "lookup", "content": "found"}, {"role": "user", "content": "Well?"}]
    r = client.chat.completions.create(model=live_server.model, messages=CHAT + past, max_tokens=2, temperature=0)
    assert r.choices[0].message.content is not None


@pytest.mark.parametrize("path, body", [("/v1/chat/completions", {"messages": CHAT}), ("/v1/completions", {"prompt": PROMPT})])
def test_an_empty_structured_outputs_is_a_400_naming_it(http, live_server, path, body):
    error = refusal(http, path, {"model": live_server.model, "structured_outputs": {}, **body})
    assert error["param"] == "structured_outputs" and "exactly one of" in error["message"]


# -- logit_bias ----------------------------------------------------------------------------------
def greedy_tokens(client, model, **kwargs) -> list[str]:
    r = client.completions.create(model=model, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=0, **kwargs)
    return r.choices[0].logprobs.tokens


def token_id(live_server, text: str) -> int:
    [token] = live_server.app.service.pool.active.engine.tokenizer.encode(text, add_special_tokens=False)
    return token


def test_logit_bias_forces_and_bans_tokens(client, live_server):
    plain = greedy_tokens(client, live_server.model)
    forced = token_id(live_server, " jumps")
    assert greedy_tokens(client, live_server.model, logit_bias={str(forced): 100}) == [" jumps"] * 6
    written = token_id(live_server, plain[0])
    banned = greedy_tokens(client, live_server.model, logit_bias={str(written): -100})
    assert plain[0] not in banned and banned != plain
    chat = client.chat.completions.create(model=live_server.model, messages=CHAT, max_tokens=3, temperature=0,
                                          logit_bias={str(forced): 100})
    assert chat.choices[0].message.content == " jumps" * 3


def test_bad_logit_bias_names_every_bad_key(http, live_server):
    body = {"model": live_server.model, "prompt": PROMPT, "logit_bias": {"x": 1, "5": 300, "6": "a", "7": 2}}
    error = refusal(http, "/v1/completions", body)
    assert error["param"] == "logit_bias" and error["message"].endswith("these entries are not: 5, 6, x")
    body["logit_bias"] = {"7": 1, "99999999": 1, "88888888": -1}
    error = refusal(http, "/v1/completions", body)
    assert error["param"] == "logit_bias" and "88888888, 99999999" in error["message"] and "7" not in error["message"]


# -- echo ----------------------------------------------------------------------------------------
def test_echo_prepends_the_prompt(client, live_server):
    plain = client.completions.create(model=live_server.model, prompt=PROMPT, max_tokens=4, temperature=0)
    echoed = client.completions.create(model=live_server.model, prompt=PROMPT, max_tokens=4, temperature=0, echo=True)
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text
    ids = live_server.app.service.pool.active.engine.tokenizer.encode(PROMPT, add_special_tokens=False)
    by_ids = client.completions.create(model=live_server.model, prompt=ids, max_tokens=4, temperature=0, echo=True)
    assert by_ids.choices[0].text == echoed.choices[0].text
    stream = list(client.completions.create(model=live_server.model, prompt=[PROMPT, "Hello"], max_tokens=4,
                                            temperature=0, echo=True, stream=True))
    texts = {0: "", 1: ""}
    firsts = {}
    for chunk in stream:
        for c in chunk.choices:
            firsts.setdefault(c.index, c.text)
            texts[c.index] += c.text
    assert firsts == {0: PROMPT, 1: "Hello"} and texts[0] == echoed.choices[0].text


def test_echo_with_logprobs_scores_the_prompt_as_transformers_does(client, live_server, tiny_model_path):
    import torch
    from transformers import AutoModelForCausalLM

    ids = live_server.app.service.pool.active.engine.tokenizer.encode(PROMPT, add_special_tokens=False)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    with torch.no_grad():
        expected = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1], dim=-1)
    expected = expected.gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1)
    request = dict(model=live_server.model, prompt=PROMPT, max_tokens=3, temperature=0, echo=True, logprobs=2)
    r = client.completions.create(**request)
    lp = r.choices[0].logprobs
    assert r.choices[0].text.startswith(PROMPT) and len(lp.tokens) == len(ids) + 3
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing before the first token
    assert torch.allclose(torch.tensor(lp.token_logprobs[1:len(ids)]), expected, atol=1e-4)
    for token, logprob, top in zip(lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:]):
        assert top[token] == logprob and 2 <= len(top) <= 3  # the token itself and the 2 best, as OpenAI
    assert lp.text_offset[len(ids)] == len(PROMPT)  # the output's offsets count in the echoed text
    assert "".join(lp.tokens[:len(ids)]) == PROMPT
    chunks = list(client.completions.create(**request, stream=True))
    streamed = [t for c in chunks for t in (c.choices[0].logprobs.token_logprobs if c.choices else [])]
    assert streamed == lp.token_logprobs
    assert chunks[0].choices[0].text == PROMPT and chunks[0].choices[0].logprobs.tokens == lp.tokens[:len(ids)]
