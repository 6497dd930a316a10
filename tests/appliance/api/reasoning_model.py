"""Tiny models that write one fixed text (bigram tables, build_chain_model); the reasoning one writes a reasoning
answer, with a chat template of our own that has `<think>` tokens.

The model is a bigram table: its attention and MLP outputs are zero, so each logit row depends on
the current token alone, and CHAIN[i] is followed by CHAIN[i + 1] (the last by EOS). After the
generation prompt's last token it writes `<think> I think</think> Paris`, or ` I think</think> Paris`
where the template opened the reasoning. The template is the Hermes tool template (so tools work)
with a generation prompt that a system message switches, as SmolLM3's flags do: `/think` opens
the reasoning, `/no_think` writes it closed and empty, neither leaves it to the model.
"""

from pathlib import Path

from tests.appliance.serving.formats.tools.templates import HERMES_TEMPLATE

CHAIN = ["\n", "<think>", " I", " think", "</think>", " Paris"]  # then EOS
GENERATION_PROMPT = "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}\n"
REASONING_TEMPLATE = HERMES_TEMPLATE.replace(GENERATION_PROMPT, """\
{%- if add_generation_prompt -%}
  {{- '<|im_start|>assistant\\n' -}}
  {%- if '/no_think' in system -%}{{- '<think>\\n\\n</think>\\n' -}}
  {%- elif '/think' in system -%}{{- '<think>' -}}{%- endif -%}
{%- endif -%}
""").replace("{{- '<|im_start|>assistant\\n' + (message.content or '') -}}", """\
{{- '<|im_start|>assistant\\n' -}}
    {%- if message.reasoning_content -%}{{- '<think>' + message.reasoning_content + '</think>' -}}{%- endif -%}
    {{- message.content or '' -}}""")
assert REASONING_TEMPLATE.count("<think>") == 3, "the Hermes template changed; update the replacements"


def build_reasoning_model(target: Path, tokenizer_from: Path) -> Path:
    return build_chain_model(target, tokenizer_from, CHAIN, REASONING_TEMPLATE, ("<think>", "</think>"))


def build_chain_model(target: Path, tokenizer_from: Path, chain: list[str], template: str,
                      added: tuple[str, ...] = ()) -> Path:
    """A bigram model that writes `chain[1:]` and EOS after the token `chain[0]` (each a single token; `added` ones
    are added to the vocabulary), under the chat template `template`. Every other token's logits are all zero."""
    import torch
    from transformers import AddedToken, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    tokenizer.add_tokens([AddedToken(token, special=False) for token in added])
    tokenizer.chat_template = template
    ids = [tokenizer.convert_tokens_to_ids(t) if t in added else tokenizer.encode(t, add_special_tokens=False)[0]
           for t in chain] + [tokenizer.eos_token_id]
    assert len(set(ids)) == len(ids)
    assert all(len(tokenizer.encode(t, add_special_tokens=False)) == 1 for t in chain if t not in added), chain
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
                         architectures=["LlamaForCausalLM"])
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        for i, (token, following) in enumerate(zip(ids, ids[1:])):
            model.model.embed_tokens.weight[token] = torch.nn.functional.one_hot(torch.tensor(i), 64).float()
            model.lm_head.weight[following, i] = 10.0
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
