"""The public API through the real `openai` package against a live server (tiny model)."""

import math

import pytest

PROMPT = "The quick brown fox"
# The tiny random model has very sharp logits: a high temperature makes draws actually random.
HOT = 5.0


def completion_text(client, model, **kwargs) -> str:
    kwargs.setdefault("max_tokens", 12)
    return client.completions.create(model=model, prompt=PROMPT, **kwargs).choices[0].text


def test_chat_answer_and_usage(client, live_server):
    r = client.chat.completions.create(
        model=live_server.model, messages=[{"role": "user", "content": "Hi there"}], max_tokens=5, temperature=0
    )
    assert r.object == "chat.completion" and r.model == live_server.model
    assert r.choices[0].message.role == "assistant"
    assert isinstance(r.choices[0].message.content, str)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert 1 <= r.usage.completion_tokens <= 5
    # the chat template wraps the message, so the prompt is longer than the message itself
    assert r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_max_completion_tokens_and_ignore_eos(client, live_server):
    r = client.chat.completions.create(
        model=live_server.model, messages=[{"role": "user", "content": "Hi"}], max_completion_tokens=7,
        temperature=0, extra_body={"ignore_eos": True},
    )
    assert r.usage.completion_tokens == 7 and r.choices[0].finish_reason == "length"


async def test_async_completion(async_client, live_server):
    r = await async_client.completions.create(model=live_server.model, prompt=PROMPT, max_tokens=6, temperature=0)
    assert r.object == "text_completion"
    assert r.usage.prompt_tokens == 4 and r.usage.completion_tokens <= 6
    assert r.choices[0].text


def test_stream_matches_non_stream_and_ends_with_usage(client, live_server):
    messages = [{"role": "user", "content": "Tell me a story"}]
    whole = client.chat.completions.create(model=live_server.model, messages=messages, max_tokens=10, temperature=0)
    chunks = list(client.chat.completions.create(
        model=live_server.model, messages=messages, max_tokens=10, temperature=0, stream=True,
        stream_options={"include_usage": True},
    ))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


async def test_async_stream_completion(async_client, live_server):
    stream = await async_client.completions.create(
        model=live_server.model, prompt=PROMPT, max_tokens=8, temperature=0, stream=True,
        extra_body={"ignore_eos": True},
    )
    pieces = [c async for c in stream]
    assert sum(1 for c in pieces if c.choices) == 8  # one chunk per token
    assert pieces[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in pieces)  # no usage chunk unless asked


def test_seed_reproducible_when_sampling(client, live_server):
    a = completion_text(client, live_server.model, temperature=HOT, seed=1234)
    b = completion_text(client, live_server.model, temperature=HOT, seed=1234)
    c = completion_text(client, live_server.model, temperature=HOT, seed=999)
    assert a == b
    assert a != c


def test_stop_string_ends_the_text_before_it(client, live_server):
    full = completion_text(client, live_server.model, temperature=HOT, seed=7, max_tokens=16,
                           extra_body={"ignore_eos": True})
    assert len(full) > 8
    stop = full[len(full) // 2: len(full) // 2 + 3]
    cut = client.completions.create(model=live_server.model, prompt=PROMPT, max_tokens=16, temperature=HOT, seed=7,
                                    stop=[stop, "never-appears-xyz"], extra_body={"ignore_eos": True}).choices[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full[: full.index(stop)]
    assert stop not in cut.text


def test_n_choices_with_offset_seeds(client, live_server):
    r = client.completions.create(model=live_server.model, prompt=PROMPT, max_tokens=8, n=3, temperature=HOT,
                                  seed=5, extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.text for c in r.choices}) > 1  # seeds seed, seed+1, seed+2 differ
    assert r.usage.completion_tokens == 24
    assert r.usage.prompt_tokens == 4  # the shared prompt counted once
    # choice 0 is the single request with the same seed
    assert r.choices[0].text == completion_text(client, live_server.model, temperature=HOT, seed=5, max_tokens=8,
                                                extra_body={"ignore_eos": True})


def test_chat_n_streamed(client, live_server):
    chunks = list(client.chat.completions.create(
        model=live_server.model, messages=[{"role": "user", "content": "x"}], max_tokens=4, n=2,
        temperature=HOT, seed=3, stream=True, extra_body={"ignore_eos": True},
    ))
    finished = {c.choices[0].index for c in chunks if c.choices[0].finish_reason == "length"}
    assert finished == {0, 1}


def test_completion_prompt_forms(client, live_server):
    model = live_server.model
    tokens = client.completions.create(model=model, prompt=[504, 2365, 6354], max_tokens=3, temperature=0)
    assert tokens.usage.prompt_tokens == 3
    batch = client.completions.create(model=model, prompt=["a b", "c d e"], max_tokens=3, temperature=0)
    assert [c.index for c in batch.choices] == [0, 1]
    ids = client.completions.create(model=model, prompt=[[1, 2], [3, 4, 5]], max_tokens=2, temperature=0)
    assert ids.usage.prompt_tokens == 5 and len(ids.choices) == 2


def test_chat_logprobs(client, live_server):
    r = client.chat.completions.create(
        model=live_server.model, messages=[{"role": "user", "content": "Hello"}], max_tokens=4, temperature=HOT,
        seed=1, logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True},
    )
    content = r.choices[0].logprobs.content
    assert len(content) == 4
    for token in content:
        assert token.logprob <= 0.0
        assert len(token.top_logprobs) == 3
        values = [t.logprob for t in token.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert token.logprob <= values[0] + 1e-6
    assert "".join(t.token for t in content) == r.choices[0].message.content


def test_completion_logprobs(client, live_server):
    r = client.completions.create(model=live_server.model, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=2,
                                  extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    assert all(len(top) <= 2 and all(v <= 0 for v in top.values()) for top in lp.top_logprobs)
    # greedy: the chosen token is the best one
    assert all(math.isclose(max(top.values()), chosen, abs_tol=1e-5) for top, chosen in zip(lp.top_logprobs, lp.token_logprobs))


def test_penalties_and_vllm_extras_are_accepted(client, live_server):
    r = client.completions.create(
        model=live_server.model, prompt=PROMPT, max_tokens=6, temperature=0.8, top_p=0.9, seed=2,
        presence_penalty=0.5, frequency_penalty=0.5, user="someone",
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.2, "min_tokens": 6, "stop_token_ids": [2]},
    )
    assert r.usage.completion_tokens == 6


def test_models_list(client, live_server):
    models = client.models.list()
    assert [m.id for m in models.data] == [live_server.model]


def test_embeddings(client, live_server):
    from engine import Engine

    if not hasattr(Engine, "embed"):
        pytest.skip("Engine.embed is not there yet")
    r = client.embeddings.create(model=live_server.model, input=["hello world", "bye"])
    assert len(r.data) == 2 and len(r.data[0].embedding) == 64  # the tiny model's hidden size
    assert r.usage.prompt_tokens > 0
    again = client.embeddings.create(model=live_server.model, input="hello world", encoding_format="float")
    assert again.data[0].embedding == pytest.approx(r.data[0].embedding, abs=1e-5)
