"""Images in: the openai client sends image_url parts (chat) and input_image parts (Responses), the anthropic client
image blocks (Messages), to a tiny Qwen3.5 served by the appliance (the family operators deploy most: a hybrid, its
Gated DeltaNet layers on state slots beside attention), and each gets generate()'s greedy answer, and /v1/models says
it takes images; every image the server will not take is a 400 naming the part (and the limit), and an image URL of
a host the operator did not list is refused before any connection is made; a stored response keeps its images, so
previous_response_id alone continues a conversation with images. (A text model's refusal:
test_compat.py.)"""

import base64
import io
import json
import logging
import socket
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anthropic
import openai
import pytest
from PIL import Image
from transformers import AutoTokenizer

from appliance.api.images import ImageLimits
from appliance.cli.models import format_status
from appliance.config import Config
from appliance.keys import KeyStore
from tests.appliance.conftest import add_keys, make_config, openai_clients, start_server
from tests.engine.vision_models import build_vlm, generate_alone, image, reference

MAX_TOKENS = 6
LIMITS = dict(max_images_per_request=2, max_image_bytes=20_000, max_image_pixels=10_000)
STORED_IMAGE_BYTES = 30_000  # per key: one 112 x 56 image's PNG (about 19 kB) fits, two do not


def png(picture) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(picture) -> str:
    return "data:image/png;base64," + base64.b64encode(png(picture)).decode()


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def ask(text: str, *urls: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}, *map(image_part, urls)]}]


@pytest.fixture(scope="module")
def vlm(default_model_path, tmp_path_factory):
    """(server, model folder): the tiny Qwen3.5 served with small image limits; images fetched from localhost."""
    folder = build_vlm("qwen3_5", tmp_path_factory.mktemp("qwen3_5"), default_model_path)
    state = tmp_path_factory.mktemp("images-state")
    server = start_server(make_config(folder, state, metrics_port=0, num_kv_blocks=128, max_num_seqs=4,
                                      max_num_batched_tokens=64, image_url_hosts=["localhost"],
                                      stored_image_bytes_per_key=STORED_IMAGE_BYTES, **LIMITS))
    add_keys(server, server.app.config.keys_db_path)
    yield server, folder
    server.stop()


@pytest.fixture(scope="module")
def expected(vlm):
    """generate()'s greedy answer for a chat message's text and images, through the model's own chat template."""
    _, folder = vlm
    model, processor = reference(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)

    def answer(text: str, images: list) -> str:
        content = [{"type": "text", "text": text}] + [{"type": "image"} for _ in images]
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                               tokenize=False)
        return tokenizer.decode(generate_alone(model, processor, prompt, images, MAX_TOKENS), skip_special_tokens=True)

    return answer


class ImageHost:
    """A plain HTTP server on localhost that serves one PNG and counts the connections it accepts."""

    def __init__(self, body: bytes):
        host = self
        self.connections = 0

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        class CountingServer(ThreadingHTTPServer):
            def get_request(self):
                host.connections += 1
                return super().get_request()

        self.server = CountingServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def request_lines(caplog) -> list[str]:
    """The request log's lines (transformers' reference model logs its own warnings beside them)."""
    return [r.getMessage() for r in caplog.records if r.name == "appliance.request"]


def test_the_openai_client_gets_generates_answer_for_an_image(vlm, expected, caplog):
    server, _ = vlm
    client, _ = openai_clients(server)
    picture = image(11, 56, 28)
    with caplog.at_level(logging.INFO, logger="appliance.request"):
        reply = client.chat.completions.create(model=server.model, messages=ask("What is this", data_url(picture)),
                                               max_tokens=MAX_TOKENS, temperature=0)
        deadline = time.monotonic() + 2
        while not request_lines(caplog) and time.monotonic() < deadline:
            time.sleep(0.01)
    assert reply.choices[0].message.content == expected("What is this", [picture])
    assert json.loads(request_lines(caplog)[-1])["images"] == 1  # the request log line counts them
    assert f'appliance_request_images_total{{model_name="{server.model}"}} 1.0' in server.service.metrics.render().decode()
    other = image(12, 56, 28)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
        model=server.model, messages=ask("What is this", data_url(other)), max_tokens=MAX_TOKENS, temperature=0,
        stream=True) if chunk.choices)
    assert streamed == expected("What is this", [other]) != reply.choices[0].message.content
    models = {m.id: m for m in client.models.list().data}
    assert models[server.model].input_modalities == ["text", "image"]
    # `appliance status`: the encoder budget, by default max_num_batched_tokens (the largest image is 4 tokens)
    engine_line = format_status(server.app.control.monitor.snapshot()).splitlines()[2]
    assert engine_line.endswith("takes images, encoding at most 64 image tokens a step")


def test_an_image_url_of_an_unlisted_host_is_refused_before_any_connection(vlm, expected):
    server, _ = vlm
    client, _ = openai_clients(server)
    picture = image(13, 56, 28)
    host = ImageHost(png(picture))
    try:
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model=server.model, max_tokens=MAX_TOKENS,
                                           messages=ask("What is this", f"http://127.0.0.1:{host.port}/a.png"))
        assert refused.value.body["param"] == "messages.0.content.1.image_url.url"
        assert "image_url_hosts" in refused.value.body["message"]
        assert host.connections == 0
        fetched = client.chat.completions.create(model=server.model, max_tokens=MAX_TOKENS, temperature=0,
                                                 messages=ask("What is this", f"http://localhost:{host.port}/a.png"))
        assert fetched.choices[0].message.content == expected("What is this", [picture])
        assert host.connections == 1
    finally:
        host.close()
    assert ImageLimits.from_config(Config()).hosts == frozenset()  # off unless the operator lists hosts


@pytest.mark.parametrize("messages, param, words", [
    (ask("Three", *[data_url(image(1, 28, 28))] * 3), "messages.0.content.3.image_url.url", "max_images_per_request"),
    (ask("Big", data_url(image(2, 100, 100))), "messages.0.content.1.image_url.url", "max_image_bytes"),
    (ask("Wide", data_url(Image.new("RGB", (120, 100), "red"))), "messages.0.content.1.image_url.url",
     "120 x 100 pixels"),
    (ask("Broken", "data:image/png;base64,%%%"), "messages.0.content.1.image_url.url", "not valid base64"),
    (ask("Text", "data:image/png;base64," + base64.b64encode(b"not an image").decode()),
     "messages.0.content.1.image_url.url", "not an image"),
    (ask("Scheme", "file:///etc/passwd"), "messages.0.content.1.image_url.url", "data: URL"),
    ([{"role": "system", "content": [image_part(data_url(image(1, 28, 28)))]}, {"role": "user", "content": "Hi"}],
     "messages.0.content.0.type", "images go in user messages"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image(1, 28, 28)), "size": 3}}]}],
     "messages.0.content.0.image_url.size", "the field 'size' is not supported"),  # a user's image part, misshapen
])
def test_images_the_server_will_not_take_are_400s_naming_the_part(vlm, messages, param, words):
    server, _ = vlm
    client, _ = openai_clients(server)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=server.model, messages=messages, max_tokens=MAX_TOKENS)
    assert refused.value.body["param"] == param, refused.value.body
    assert words in refused.value.body["message"], refused.value.body


def test_responses_and_messages_take_images_as_chat_does(vlm, expected):
    server, folder = vlm
    client, _ = openai_clients(server)
    picture = image(14, 56, 28)
    url = data_url(picture)
    answer = expected("What is this", [picture])
    response = client.responses.create(model=server.model, max_output_tokens=MAX_TOKENS, temperature=0, input=[
        {"role": "user", "content": [{"type": "input_text", "text": "What is this"},
                                     {"type": "input_image", "image_url": url, "detail": "auto"}]}])
    assert response.output_text == answer
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=server.model, max_output_tokens=MAX_TOKENS, instructions="Be brief.", input=[
            {"role": "user", "content": [{"type": "input_image", "image_url": "http://127.0.0.1:9/a.png"}]}])
    assert refused.value.body["param"] == "input.0.content.0.image_url"

    claude = anthropic.Anthropic(base_url=server.base_url, api_key=server.key, max_retries=0, timeout=120)
    blocks = [{"type": "text", "text": "What is this"},
              {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": url.split(",", 1)[1]}}]
    message = claude.messages.create(model=server.model, max_tokens=MAX_TOKENS, extra_body={"temperature": 0},
                                     messages=[{"role": "user", "content": blocks}])
    assert message.content[0].text == answer
    counted = claude.messages.count_tokens(model=server.model, messages=[{"role": "user", "content": blocks}])
    assert counted.input_tokens == message.usage.input_tokens > len(AutoTokenizer.from_pretrained(folder).encode(
        "What is this"))  # the image's placeholder tokens, as the processor expands them


def user_turn(text: str, *urls: str) -> dict:
    """A Responses API user message with input_image parts."""
    return {"role": "user", "content": [{"type": "input_text", "text": text},
                                        *({"type": "input_image", "image_url": url} for url in urls)]}


def test_previous_response_id_alone_continues_a_conversation_with_images(vlm):
    server, _ = vlm
    client, _ = openai_clients(server)
    vision = server.service.pool.active.engine.session.runner.vision
    picture = image(15, 56, 28)
    first_turn = user_turn("What is this", data_url(picture))
    encoded = vision.images_encoded
    first = client.responses.create(model=server.model, max_output_tokens=MAX_TOKENS, temperature=0,
                                    input=[first_turn])
    follow = client.responses.create(model=server.model, max_output_tokens=MAX_TOKENS, temperature=0,
                                     input="And the colours?", previous_response_id=first.id)
    assert vision.images_encoded == encoded + 1  # the follow-up found the image in the encoder cache, by content
    whole = client.responses.create(model=server.model, max_output_tokens=MAX_TOKENS, temperature=0, store=False,
                                    input=[first_turn, {"role": "assistant", "content": first.output_text},
                                           {"role": "user", "content": "And the colours?"}])
    assert follow.output_text == whole.output_text
    assert follow.usage.input_tokens == whole.usage.input_tokens
    # What is kept is the image's bytes, not its URL: a follow-up reads nothing from anywhere.
    with sqlite3.connect(server.app.config.keys_db_path) as db:
        conversation, = db.execute("SELECT conversation FROM responses WHERE id = ?", (follow.id,)).fetchone()
        kept = [row[0] for row in db.execute("SELECT data FROM response_images")]
    assert "data:" not in conversation and png(picture) in kept
    with pytest.raises(openai.BadRequestError) as refused:  # the stored image counts toward the request's images
        client.responses.create(model=server.model, max_output_tokens=MAX_TOKENS, previous_response_id=follow.id,
                                input=[user_turn("And these?", *(data_url(image(seed, 28, 28)) for seed in (18, 19)))])
    assert refused.value.body["param"] == "input.0.content.2.image_url"
    assert "1 of them previous_response_id's" in refused.value.body["message"], refused.value.body


def test_the_images_a_keys_stored_responses_hold_are_bounded(vlm):
    server, _ = vlm
    with KeyStore(server.app.config.keys_db_path) as store:
        _, key = store.create("stored-images")
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0, timeout=120)
    big, other = data_url(image(16, 112, 56)), data_url(image(17, 112, 56))
    client.responses.create(model=server.model, max_output_tokens=1, input=[user_turn("One", big)])
    client.responses.create(model=server.model, max_output_tokens=1, input=[user_turn("Again", big)])  # counts once
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=server.model, max_output_tokens=1, input=[user_turn("Two", other)])
    assert refused.value.body["param"] == "store"
    assert "stored_image_bytes_per_key" in refused.value.body["message"], refused.value.body
    client.responses.create(model=server.model, max_output_tokens=1, input=[user_turn("Two", other)],
                            store=False)  # not kept: not counted


def test_a_follow_up_does_not_fetch_a_stored_responses_image_again(vlm):
    server, _ = vlm
    client, _ = openai_clients(server)
    host = ImageHost(png(image(20, 56, 28)))
    try:
        first = client.responses.create(model=server.model, max_output_tokens=1, input=[
            user_turn("What is this", f"http://localhost:{host.port}/a.png")])
    finally:
        host.close()  # the host is gone: a follow-up that fetched again would fail
    follow = client.responses.create(model=server.model, max_output_tokens=MAX_TOKENS, input="And now?",
                                     previous_response_id=first.id)
    assert follow.usage.input_tokens > first.usage.input_tokens and host.connections == 1
