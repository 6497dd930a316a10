"""A tiny gpt-oss model that writes one known harmony transcript through the real engine, with gpt-oss's real template.

The model is tests/engine/architectures.py's tiny gpt_oss (its real config class) with the default
model's tokenizer plus harmony's special tokens, and gpt-oss's own chat_template.jinja. After the
generation prompt (`…<|start|>assistant`) it writes

    <|channel|>analysis<|message|>I should look up the forecast<|end|>
    <|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{"city": "Paris"}<|call|>

Its expert outputs are zeroed and its LM head is a bigram table: each token is followed by the
token after its first place in the transcript. Three tokens come back with another successor (the
second message's "assistant", `<|channel|>` and `<|message|>`); for each, one head of a
full-attention layer looks from that token for the transcript's FLAG word, which comes before the
second message and nowhere in a prompt, and where it finds it adds the second successor's logit.
Its generation config stops at `<|return|>` and `<|call|>`, as gpt-oss's does.
"""

import json
from pathlib import Path

from tests.appliance.serving.formats.templates import real_template

SPECIAL = ("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>", "<|call|>")
REASONING = "I should look up the forecast"
FLAG = " forecast"  # a token of the reasoning no prompt of the tests holds
CALL_NAME = "get_weather"
CALL_ARGUMENTS = {"city": "Paris"}
TRANSCRIPT = ["<|channel|>", "analysis", "<|message|>", REASONING, "<|end|>", "<|start|>", "assistant",
              f" to=functions.{CALL_NAME}", "<|channel|>", "commentary ", "<|constrain|>", "json", "<|message|>",
              json.dumps(CALL_ARGUMENTS), "<|call|>"]
WEATHER_TOOL = {"type": "function", "function": {
    "name": CALL_NAME, "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def harmony_tokenizer(tokenizer_from: Path):
    """The default model's tokenizer with harmony's special tokens and gpt-oss's chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL)})
    tokenizer.chat_template = real_template("gpt-oss")
    return tokenizer


def build_harmony_model(target: Path, tokenizer_from: Path) -> Path:
    import torch

    from tests.engine.architectures import build

    tokenizer = harmony_tokenizer(tokenizer_from)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "?"}], add_generation_prompt=True,
                                           tokenize=False)
    chain = tokenizer.encode(prompt, add_special_tokens=False)[-1:]  # from the generation prompt's last token
    for text in TRANSCRIPT:
        chain += [tokenizer.convert_tokens_to_ids(text)] if text in SPECIAL else tokenizer.encode(
            text, add_special_tokens=False)
    assert tokenizer.decode(chain[1:]) == "".join(TRANSCRIPT)
    [flag] = tokenizer.encode(FLAG, add_special_tokens=False)
    first: dict[int, int] = {}  # token -> its successor
    second: dict[int, int] = {}  # token -> its successor where it comes back after FLAG
    for i, (token, following) in enumerate(zip(chain, chain[1:])):
        if first.setdefault(token, following) != following:
            assert token not in second and chain.index(flag) < i, tokenizer.decode([token])
            second[token] = following
    model = build("gpt_oss", vocab=len(tokenizer))
    config = model.config
    hidden, head_dim = config.hidden_size, config.head_dim
    dims = {token: i for i, token in enumerate(dict.fromkeys(chain))}  # a one-hot embedding per token
    gates = {token: hidden - 1 - h for h, token in enumerate(second)}  # the residual dim each head writes
    assert len(dims) <= hidden - len(gates) and len(gates) <= config.num_attention_heads
    looking = config.layer_types.index("full_attention")
    slow = head_dim // 2 - 1  # the rotary pair that turns slowest: its q.k barely depends on the distance
    with torch.no_grad():
        for n, layer in enumerate(model.model.layers):
            for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                               layer.self_attn.o_proj):
                projection.weight.zero_()
                projection.bias.zero_()
            layer.self_attn.sinks.fill_(-30.0)
            layer.mlp.experts.down_proj.zero_()
            layer.mlp.experts.down_proj_bias.zero_()
        attention = model.model.layers[looking].self_attn
        for kv in range(config.num_key_value_heads):
            attention.k_proj.weight[kv * head_dim + slow, dims[flag]] = 1.0
            attention.v_proj.weight[kv * head_dim + slow, dims[flag]] = 1.0 / 8  # the input norm scales by 8
        for head, (token, dim) in enumerate(gates.items()):
            attention.q_proj.weight[head * head_dim + slow, dims[token]] = 1.0
            attention.o_proj.weight[dim, head * head_dim + slow] = 1.0
        model.lm_head.weight.zero_()
        model.model.embed_tokens.weight[list(dims)] = 0.0
        for token, dim in dims.items():
            model.model.embed_tokens.weight[token, dim] = 1.0
        for token, following in first.items():
            model.lm_head.weight[following, dims[token]] = 10.0
        for token, following in second.items():
            model.lm_head.weight[following, gates[token]] = 20.0
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL}
    config.bos_token_id, config.eos_token_id, config.pad_token_id = (tokenizer.bos_token_id, ids["<|return|>"],
                                                                    tokenizer.pad_token_id)
    model.generation_config.eos_token_id = [ids["<|return|>"], ids["<|call|>"]]
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
