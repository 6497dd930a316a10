"""The real default model (SmolLM2-135M-Instruct) answers through the API: one short question."""

import pytest

from tests.appliance.conftest import openai_clients


@pytest.mark.slow
def test_capital_of_france(default_server):
    assert default_server.model == "smollm2-135m-instruct"
    client, _ = openai_clients(default_server)
    r = client.chat.completions.create(
        model=default_server.model, messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=12, temperature=0,
    )
    assert "Paris" in r.choices[0].message.content
