"""The real default model (SmolLM2-135M-Instruct) answers through the API: one short question."""

import openai
import pytest

from tests.appliance.conftest import add_keys, make_config, start_server


@pytest.mark.slow
def test_capital_of_france(default_model_path, tmp_path):
    server = start_server(make_config(default_model_path, tmp_path, metrics_port=0, dtype="bfloat16"))
    try:
        add_keys(server, server.app.config.keys_db_path)
        assert server.model == "smollm2-135m-instruct"
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=server.key, max_retries=0, timeout=60)
        r = client.chat.completions.create(
            model=server.model, messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=12, temperature=0,
        )
        assert "Paris" in r.choices[0].message.content
    finally:
        server.stop()
