import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from engine.detokenizer import IncrementalDetokenizer

IM_END = "<|im_end|>"
SAMPLE_TEXT = "héllo wörld 日本語 🙂 naïve café 你好 😀🎉"


def train(pre_tokenizer, decoder, vocab_size: int, **trainer_options) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoder
    texts = [SAMPLE_TEXT, "hello world, the answer is STOP stop", "Hello prompt ok"] * 5
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, **trainer_options)
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=IM_END, clean_up_tokenization_spaces=False)


@pytest.fixture(scope="module")
def byte_bpe():
    """A byte-level BPE with so few merges that CJK and emoji are split across tokens."""
    return train(
        pre_tokenizers.ByteLevel(add_prefix_space=False),
        decoders.ByteLevel(),
        vocab_size=300,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[IM_END],
    )


@pytest.fixture(scope="module")
def smollm2(default_model_path):
    return AutoTokenizer.from_pretrained(default_model_path)


class PythonBacked:
    """A tokenizer seen as one without a Rust backend (transformers' PythonBackend kind): the
    detokenizer runs its own window over the tokenizer's token strings. Records the longest window."""

    backend_tokenizer = None

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.longest_window = 0

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __len__(self):
        return len(self._tokenizer)

    def convert_tokens_to_string(self, tokens):
        self.longest_window = max(self.longest_window, len(tokens))
        return self._tokenizer.convert_tokens_to_string(tokens)


@pytest.fixture(scope="module")
def smollm2_python(smollm2):
    return PythonBacked(smollm2)


@pytest.fixture(scope="module", params=["byte_bpe", "smollm2", "smollm2_python"])
def tokenizer(request):
    return request.getfixturevalue(request.param)


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def stream(tokenizer, ids, prompt=(), **options):
    """Feeds ids one by one, as the engine would: until a stop string matches."""
    detokenizer = IncrementalDetokenizer(tokenizer, list(prompt), **options)
    deltas = []
    for i in ids:
        deltas.append(detokenizer.append(i))
        if deltas[-1].stop_string is not None:
            break
    return detokenizer, deltas


def streamed_text(tokenizer, ids, prompt=(), **options) -> str:
    detokenizer, deltas = stream(tokenizer, ids, prompt, **options)
    text = "".join(d.text for d in deltas) + detokenizer.flush()
    assert text == detokenizer.text
    return text


PROMPTS = st.sampled_from(["", "Hello", "prompt 日本", "ok 🙂\n"])


@settings(max_examples=300, deadline=None)
@given(data=st.data(), prompt=PROMPTS, skip_special_tokens=st.booleans())
def test_streamed_random_ids_decode_like_the_whole_sequence(tokenizer, data, prompt, skip_special_tokens):
    ids = data.draw(st.lists(st.integers(0, len(tokenizer) - 1), max_size=40))
    text = streamed_text(tokenizer, ids, encode(tokenizer, prompt), skip_special_tokens=skip_special_tokens)
    assert text == tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


REAL_TEXT = st.text(alphabet=st.sampled_from(list(SAMPLE_TEXT + "\n\tab")), max_size=60)


@settings(max_examples=300, deadline=None)
@given(text=REAL_TEXT, prompt=PROMPTS)
def test_streamed_text_never_shows_a_broken_character(tokenizer, text, prompt):
    ids = encode(tokenizer, text)
    detokenizer, deltas = stream(tokenizer, ids, encode(tokenizer, prompt))
    assert not any("\ufffd" in d.text for d in deltas)
    assert detokenizer.flush() == ""
    assert detokenizer.text == tokenizer.decode(ids) == text


@settings(max_examples=300, deadline=None)
@given(text=REAL_TEXT, stop=st.sampled_from(["日本", "lo w", "🙂", "é", "a\n", "😀🎉 n"]))
def test_streamed_text_ends_right_before_the_first_stop_string(tokenizer, text, stop):
    detokenizer, deltas = stream(tokenizer, encode(tokenizer, text), stop=[stop])
    expected = text.split(stop)[0]
    if stop in text:
        assert deltas[-1].stop_string == stop
        assert detokenizer.flush() == ""
    else:
        assert all(d.stop_string is None for d in deltas)
        detokenizer.flush()
    assert detokenizer.text == expected


@pytest.mark.parametrize("stop", ["日本語", "lo w", "🙂 n"])
def test_a_stop_string_spanning_tokens_is_found_and_not_emitted(tokenizer, stop):
    ids = encode(tokenizer, SAMPLE_TEXT)
    assert not any(stop in tokenizer.decode([i]) for i in ids)  # it really spans tokens
    detokenizer, deltas = stream(tokenizer, ids, stop=[stop])
    assert deltas[-1].stop_string == stop
    # Found as soon as its last token came.
    assert stop in tokenizer.decode(ids[: len(deltas)]) and stop not in tokenizer.decode(ids[: len(deltas) - 1])
    assert detokenizer.text == SAMPLE_TEXT.split(stop)[0]  # everything before the stop is out
    with pytest.raises(RuntimeError, match="stop string"):
        detokenizer.append(ids[0])
    assert detokenizer.flush() == ""


def test_the_earliest_of_several_stop_strings_wins(byte_bpe):
    detokenizer, deltas = stream(byte_bpe, encode(byte_bpe, "one two three"), stop=["three", "two"])
    assert (detokenizer.text, deltas[-1].stop_string) == ("one ", "two")


def test_text_that_only_looked_like_a_stop_string_is_emitted_once_ruled_out(tokenizer):
    detokenizer = IncrementalDetokenizer(tokenizer, [], stop=["STOP"])
    for segment, emitted_so_far in [("abc S", "abc "), ("T", "abc "), ("x", "abc STx"), (" ST", "abc STx ")]:
        for i in encode(tokenizer, segment):
            assert detokenizer.append(i).stop_string is None
        assert detokenizer.text == emitted_so_far
    # At the end of generation the held-back "ST" is real output.
    assert detokenizer.flush() == "ST"
    assert detokenizer.text == "abc STx ST"


def test_flush_emits_a_trailing_incomplete_character_as_decoded(byte_bpe):
    ids = encode(byte_bpe, "a🙂")[:-1]  # the emoji's last byte never comes
    detokenizer, deltas = stream(byte_bpe, ids)
    assert detokenizer.text == "a"
    assert detokenizer.flush() == byte_bpe.decode(ids)[1:]
    assert detokenizer.text.endswith("\ufffd")
    with pytest.raises(RuntimeError, match="flushed"):
        detokenizer.append(ids[0])


@pytest.mark.parametrize("skip_special_tokens, expected", [(True, "hi there"), (False, f"hi{IM_END} there")])
def test_special_tokens_are_left_out_when_asked(tokenizer, skip_special_tokens, expected):
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    ids = encode(tokenizer, "hi") + [im_end] + encode(tokenizer, " there")
    prompt = encode(tokenizer, "Hello") + [im_end]
    assert streamed_text(tokenizer, ids, prompt, skip_special_tokens=skip_special_tokens) == expected


@pytest.mark.parametrize("backed", [lambda tokenizer: tokenizer, PythonBacked], ids=["rust", "python"])
def test_the_first_token_continues_the_prompt(backed):
    # Metaspace decoders drop the leading space of a text's first token; after a prompt it stays.
    tokenizer = backed(train(pre_tokenizers.Metaspace(), decoders.Metaspace(), vocab_size=120))
    ids = encode(tokenizer, " world")
    assert tokenizer.decode(ids) == "world"
    assert streamed_text(tokenizer, ids, encode(tokenizer, "Hello")) == " world"


def test_each_step_decodes_a_small_window_however_long_the_output(smollm2):
    spy = PythonBacked(smollm2)
    ids = encode(smollm2, SAMPLE_TEXT * 100)
    assert streamed_text(spy, ids, encode(smollm2, "Hello prompt ok")) == SAMPLE_TEXT * 100
    assert len(ids) > 1000 and 0 < spy.longest_window <= 10


def test_kept_special_tokens_are_decoded_while_others_are_skipped(default_model_path):
    """A tool-call marker that is a special token must reach the text; EOS must not."""
    tokenizer = AutoTokenizer.from_pretrained(default_model_path)
    tokenizer.add_special_tokens({"additional_special_tokens": ["[TOOL_CALLS]"]})
    marker = tokenizer.convert_tokens_to_ids("[TOOL_CALLS]")
    ids = [marker] + tokenizer.encode('[{"name": "f"}]', add_special_tokens=False) + [tokenizer.eos_token_id]
    for kept, expected in ((frozenset(), '[{"name": "f"}]'), (frozenset({marker}), '[TOOL_CALLS][{"name": "f"}]')):
        detok = IncrementalDetokenizer(tokenizer, [], kept_special_ids=kept)
        text = "".join(detok.append(t).text for t in ids) + detok.flush()
        assert text == expected
