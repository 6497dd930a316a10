"""/tokenize and /detokenize (vLLM's shapes), and max_model_len on /v1/models."""


def test_tokenize_and_detokenize_round_trip(http, live_server):
    r = http.post("/tokenize", json={"model": live_server.model, "prompt": "The quick brown fox",
                                     "return_token_strs": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(body["tokens"]) == 4 and len(body["token_strs"]) == 4
    assert body["max_model_len"] == live_server.app.service.pool.active.max_model_len
    back = http.post("/detokenize", json={"model": live_server.model, "tokens": body["tokens"]})
    assert back.status_code == 200 and back.json() == {"prompt": "The quick brown fox"}


def test_tokenize_chat_messages_as_the_template_renders_them(http, live_server):
    messages = [{"role": "user", "content": "Hi there"}]
    chat = http.post("/tokenize", json={"messages": messages}).json()
    tokenizer = live_server.app.service.pool.active.engine.tokenizer
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert chat["tokens"] == tokenizer.encode(text, add_special_tokens=False)
    completion = http.post("/v1/chat/completions", json={"model": live_server.model, "messages": messages,
                                                         "max_tokens": 1}).json()
    assert completion["usage"]["prompt_tokens"] == chat["count"]


def test_detokenize_names_ids_outside_the_vocabulary(http, live_server):
    r = http.post("/detokenize", json={"tokens": [1, 10**9]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tokens" and "1000000000" in r.text


def test_tokenize_needs_a_key(live_server):
    import httpx

    assert httpx.post(live_server.base_url + "/tokenize", json={"prompt": "x"}).status_code == 401


def test_models_say_their_context_length(client, live_server):
    [card] = client.models.list().data
    assert card.max_model_len == live_server.app.service.pool.active.max_model_len > 0
