"""Structured output: constrained requests produce valid output whatever the model would say.

The tiny random models' unconstrained output is garbage, which is the point: every constrained
output that finishes must still parse and validate. The compiler, the bitmask in the sampler, the
matcher's life across preemption, and the errors are checked one by one.
"""

import asyncio
import json
import re
import threading

import jsonschema
import pytest
import torch

from engine import AsyncEngine, Engine, EngineConfig, InvalidParameter, SamplingParams, StructuredOutput
from engine.structured_output import GrammarCompiler, GrammarMatcher, choice_grammar

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "score": {"type": "number", "minimum": -1.5, "maximum": 2.5},
        "email": {"type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.(com|org)$"},
        "role": {"enum": ["admin", "user", "guest"]},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 8}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["zip"],
        },
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "minItems": 1, "maxItems": 3},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "role", "address", "tags"],
}
ITEMS = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 999}, "ok": {"type": "boolean"}},
        "required": ["id", "ok"],
    },
    "minItems": 1,
    "maxItems": 3,
}
ITEMS_OBJECT = {"type": "object", "properties": {"items": ITEMS}, "required": ["items"]}
REGEXES = [r"[a-z]{3}-\d{2}", r"(yes|no)!", r"\d{1,3}(\.\d{1,2})?"]
CHOICES = ["yes", "no", 'a "quoted" \\ one', "two\nlines"]
# Sums like (12+7+300): EBNF with repetition bounds, checked by the regex below.
SUM_GRAMMAR = 'root ::= "(" num ("+" num){0,3} ")"\nnum ::= [0-9]{1,3}'
SUM_REGEX = r"\(\d{1,3}(\+\d{1,3}){0,3}\)"
MODES = [pytest.param(0.0, id="greedy"), pytest.param(1.0, id="temperature-1")]


@pytest.fixture(scope="module", params=["tied", "untied"])
def engine(request, tiny_model_path, tiny_model_path_b):
    eng = Engine(EngineConfig())
    eng.load_model(tiny_model_path if request.param == "tied" else tiny_model_path_b)
    return eng


def run(eng: Engine, requests: dict[str, tuple[str | list[int], SamplingParams]]) -> dict[str, dict]:
    for request_id, (prompt, params) in requests.items():
        eng.add_request(request_id, prompt, params)
    results = {request_id: {"text": "", "tokens": [], "finish": None} for request_id in requests}
    while eng.has_unfinished():
        for out in eng.step():
            r = results[out.request_id]
            r["text"] += out.new_text
            r["tokens"] += out.new_token_ids
            r["finish"] = out.finish_reason
    return results


def constrained(spec: StructuredOutput, temperature: float, n: int, max_tokens: int = 256, **params):
    """n requests for spec: one greedy, or n seeded draws at the temperature."""
    n = 1 if temperature == 0.0 else n
    return {
        f"{spec.kind}-{i}": (f"Prompt number {i}:", SamplingParams(
            max_tokens=max_tokens, temperature=temperature, seed=i, structured_output=spec, **params
        ))
        for i in range(n)
    }


def finished_texts(results: dict[str, dict]) -> list[str]:
    """The texts of the requests the grammar ended; all of them must have ended that way."""
    assert {r["finish"] for r in results.values()} == {"stop"}, results
    return [r["text"] for r in results.values()]


# -- the five kinds, end to end ------------------------------------------------------------------
@pytest.mark.parametrize("temperature", MODES)
@pytest.mark.parametrize("schema", [PERSON, ITEMS, ITEMS_OBJECT], ids=["person", "array", "nested-array"])
def test_json_schema_outputs_parse_and_validate(engine, schema, temperature):
    spec = StructuredOutput(json=schema, any_whitespace=False)
    for text in finished_texts(run(engine, constrained(spec, temperature, n=4))):
        jsonschema.validate(json.loads(text), schema)


def test_a_schema_given_as_text_works_as_its_dict(engine):
    spec = StructuredOutput(json=json.dumps(ITEMS), any_whitespace=False)
    (text,) = finished_texts(run(engine, constrained(spec, 0.0, n=1)))
    jsonschema.validate(json.loads(text), ITEMS)


@pytest.mark.parametrize("temperature", MODES)
def test_json_object_outputs_parse_to_a_dict(engine, temperature):
    # An unbounded object may not end within max_tokens; the ones that end must be objects.
    results = run(engine, constrained(StructuredOutput(json_object=True, any_whitespace=False), temperature, n=4))
    for r in results.values():
        if r["finish"] == "stop":
            assert isinstance(json.loads(r["text"]), dict)
        else:
            assert r["finish"] == "length" and r["text"].startswith("{")


@pytest.mark.parametrize("temperature", MODES)
@pytest.mark.parametrize("regex", REGEXES)
def test_regex_outputs_match_it_whole(engine, regex, temperature):
    for text in finished_texts(run(engine, constrained(StructuredOutput(regex=regex), temperature, n=4))):
        assert re.fullmatch(regex, text), text


@pytest.mark.parametrize("temperature", MODES)
def test_choice_outputs_are_one_of_the_choices(engine, temperature):
    for text in finished_texts(run(engine, constrained(StructuredOutput(choice=CHOICES), temperature, n=6))):
        assert text in CHOICES


@pytest.mark.parametrize("temperature", MODES)
def test_ebnf_grammar_outputs_match_it(engine, temperature):
    for text in finished_texts(run(engine, constrained(StructuredOutput(grammar=SUM_GRAMMAR), temperature, n=4))):
        assert re.fullmatch(SUM_REGEX, text), text


def test_the_grammar_ends_the_request_even_with_ignore_eos_and_min_tokens(engine):
    results = run(engine, constrained(StructuredOutput(choice=["yes", "no"]), 0.0, n=1, ignore_eos=True, min_tokens=20))
    (r,) = results.values()
    assert r["finish"] == "stop" and r["text"] in ("yes", "no")
    assert r["tokens"][-1] in engine.session.eos_token_ids  # the grammar's end, then EOS


def test_max_tokens_cuts_a_constrained_request_to_a_prefix(engine):
    (r,) = run(engine, constrained(StructuredOutput(json=PERSON, any_whitespace=False), 0.0, n=1, max_tokens=5)).values()
    head = '{"name": "'  # every valid output starts so
    assert r["finish"] == "length" and len(r["tokens"]) == 5
    assert head.startswith(r["text"]) or r["text"].startswith(head)


def test_a_length_bounded_string_holds_no_raw_control_character(engine):
    # xgrammar's own grammar for minLength/maxLength strings allows them (invalid JSON); ours does not.
    compiled = engine.compile_structured_output(StructuredOutput(json=PERSON, any_whitespace=False))
    tokenizer = engine.tokenizer
    control = next(t for t in range(len(tokenizer)) if tokenizer.decode([t]) == "\x17")
    matcher = GrammarMatcher(compiled)
    assert all(matcher.accept_token(t) for t in tokenizer.encode('{"name": "ab', add_special_tokens=False))
    assert not matcher.accept_token(control)
    assert matcher.accept_token(tokenizer.encode("c", add_special_tokens=False)[0])


def test_any_whitespace_allows_whitespace_between_tokens_and_one_line_json_does_not(engine):
    pretty = json.dumps({"id": 3, "ok": True}, indent=2)
    one_line = json.dumps({"id": 3, "ok": True})
    for any_whitespace, accepted in [(True, {pretty, one_line}), (False, {one_line})]:
        compiled = engine.compile_structured_output(StructuredOutput(json=ITEMS["items"], any_whitespace=any_whitespace))
        for text in (pretty, one_line):
            matcher = GrammarMatcher(compiled)
            ok = matcher.accept_string(text) and matcher.is_completed()
            assert ok == (text in accepted), (any_whitespace, text)


def test_strict_refuses_properties_the_schema_does_not_name(engine):
    schema = {"type": "object", "properties": {"id": {"type": "integer"}}}
    for strict, accepted in [(True, False), (False, True)]:
        matcher = GrammarMatcher(engine.compile_structured_output(StructuredOutput(json=schema, strict=strict)))
        assert (matcher.accept_string('{"other": 1}') and matcher.is_completed()) == accepted


# -- errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec, says",
    [
        (dict(json={"type": "objectx"}), 'Unsupported type "objectx"'),
        (dict(json={"type": "integer", "minimum": 5, "maximum": 1}), "minimum greater than maximum"),
        (dict(regex="(abc"), "parenthesis is not closed"),
        (dict(grammar="root ::= foo"), 'Rule "foo" is not defined'),
        (dict(grammar='root ::= "a'), "string literal"),
    ],
)
def test_an_invalid_spec_is_refused_with_xgrammars_reason_made_readable(engine, spec, says):
    with pytest.raises(InvalidParameter) as refused:
        engine.add_request("bad", "Hello", SamplingParams(structured_output=StructuredOutput(**spec)))
    assert refused.value.param == "structured_output"
    message = str(refused.value)
    assert says in message and message.startswith("invalid ")
    assert ".cc:" not in message and not re.search(r"\[\d\d:\d\d", message)  # no C++ location or clock
    assert not engine.has_unfinished()


@pytest.mark.parametrize(
    "spec",
    [dict(), dict(regex="a", choice=["a"]), dict(json="{not json"), dict(json="[1]"), dict(choice=[]), dict(regex="")],
)
def test_a_malformed_spec_is_refused_when_built(spec):
    with pytest.raises(InvalidParameter) as refused:
        StructuredOutput(**spec)
    assert refused.value.param == "structured_output"


def test_a_model_without_tokenizer_refuses_structured_output():
    from transformers import LlamaConfig

    eng = Engine(EngineConfig())
    eng.load_model(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=1, architectures=["LlamaForCausalLM"]))
    with pytest.raises(InvalidParameter, match="needs a tokenizer") as refused:
        eng.add_request("a", [1, 2], SamplingParams(structured_output=StructuredOutput(regex="a")))
    assert refused.value.param == "structured_output"


# -- the compile cache -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


def test_the_same_spec_compiles_once_and_equal_specs_share_it(tokenizer):
    compiler = GrammarCompiler(tokenizer, len(tokenizer), {tokenizer.eos_token_id})
    first = compiler.compile(StructuredOutput(json={"b": 1, "type": "object"}))
    again = compiler.compile(StructuredOutput(json='{"type": "object", "b": 1}'))
    assert compiler.num_compiled == 1 and again is first
    compiler.compile(StructuredOutput(json={"type": "object"}, strict=False))  # other options, other grammar
    assert compiler.num_compiled == 2


def test_the_cache_is_bounded_and_drops_the_least_recently_used(tokenizer):
    compiler = GrammarCompiler(tokenizer, len(tokenizer), {tokenizer.eos_token_id}, max_cached=2)
    a, b, c = (StructuredOutput(regex=r) for r in ("a+", "b+", "c+"))
    compiler.compile(a), compiler.compile(b), compiler.compile(a), compiler.compile(c)  # b is the oldest
    assert compiler.num_compiled == 3
    compiler.compile(a)
    assert compiler.num_compiled == 3
    compiler.compile(b)
    assert compiler.num_compiled == 4


def test_concurrent_compiles_of_one_spec_compile_it_once(tokenizer):
    compiler = GrammarCompiler(tokenizer, len(tokenizer), {tokenizer.eos_token_id})
    spec = StructuredOutput(json=PERSON)
    results = []
    threads = [threading.Thread(target=lambda: results.append(compiler.compile(spec))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert compiler.num_compiled == 1 and len(results) == 8 and all(r is results[0] for r in results)


def test_a_refused_spec_is_not_cached(tokenizer):
    compiler = GrammarCompiler(tokenizer, len(tokenizer), {tokenizer.eos_token_id})
    for _ in range(2):
        with pytest.raises(InvalidParameter):
            compiler.compile(StructuredOutput(regex="(abc"))
    assert compiler.num_compiled == 2


async def test_async_generate_compiles_off_the_engine_thread(tiny_model_path):
    eng = Engine(EngineConfig())
    eng.load_model(tiny_model_path)
    compiled_on = []
    compile = eng.compile_structured_output
    eng.compile_structured_output = lambda spec: (compiled_on.append(threading.current_thread().name), compile(spec))[1]
    async_engine = AsyncEngine(eng)
    async_engine.start()
    try:
        params = SamplingParams(max_tokens=64, temperature=0, structured_output=StructuredOutput(choice=CHOICES))
        outputs = [o async for o in async_engine.generate("Pick one:", params)]
        assert "".join(o.new_text for o in outputs) in CHOICES and outputs[-1].finish_reason == "stop"
        assert compiled_on[0].startswith("engine-prepare")
        assert compiled_on[1] == "engine-loop" and eng.session.grammars.num_compiled == 1  # a cache hit there
        assert async_engine.stats().structured_output_requests == 1

        with pytest.raises(InvalidParameter, match="parenthesis"):
            await async_engine.compile_structured_output(StructuredOutput(regex="(abc"))
        with pytest.raises(InvalidParameter) as refused:
            async for _ in async_engine.generate("x", SamplingParams(structured_output=StructuredOutput(grammar="root ::= x"))):
                pass
        assert refused.value.param == "structured_output"
        await asyncio.sleep(0)
        assert not eng.has_unfinished()
    finally:
        async_engine.shutdown()


# -- preemption --------------------------------------------------------------------------------------
def test_a_mixed_batch_under_preemption_keeps_free_requests_exact_and_constrained_ones_valid(tiny_model_path):
    """A KV pool far too small for the batch: sequences are preempted and recomputed mid-output.

    Free requests still equal generate() alone; constrained ones are valid and, greedy or seeded,
    equal what they produce alone with room to spare: the matcher never saw a token twice."""
    free = {f"free-{i}": ([300 + i] * (5 + 7 * i), SamplingParams(max_tokens=40 + 10 * i, temperature=0, ignore_eos=True))
            for i in range(3)}
    person = StructuredOutput(json=PERSON, any_whitespace=False)
    bound = {
        "person-greedy": ("Who?", SamplingParams(max_tokens=200, temperature=0, structured_output=person)),
        "person-seeded": ("Who?", SamplingParams(max_tokens=200, temperature=1.0, seed=3, structured_output=person)),
        "items-seeded": ("List:", SamplingParams(max_tokens=200, temperature=1.0, seed=4,
                                                 structured_output=StructuredOutput(json=ITEMS, any_whitespace=False))),
        "sum-greedy": ("Add:", SamplingParams(max_tokens=60, temperature=0, structured_output=StructuredOutput(grammar=SUM_GRAMMAR))),
    }
    eng = Engine(EngineConfig(num_kv_blocks=9, block_size=16, max_num_batched_tokens=64))
    eng.load_model(tiny_model_path)
    preempted, preempt = set(), eng.session.scheduler._preempt
    eng.session.scheduler._preempt = lambda seq: (preempted.add(seq.request_id), preempt(seq))
    interleaved = [*zip(free.items(), bound.items()), *[(item,) for item in list(bound.items())[len(free):]]]
    results = run(eng, dict(item for pair in interleaved for item in pair))  # preemption takes the newest first
    assert preempted & {"person-greedy", "person-seeded", "items-seeded"} and preempted & set(free), preempted

    model = eng.session.loaded.model
    model.set_attn_implementation("sdpa")
    eos, model.generation_config.eos_token_id = model.generation_config.eos_token_id, None
    try:
        for request_id, (prompt, params) in free.items():
            ids = torch.tensor([prompt])
            want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=params.max_tokens, do_sample=False)
            assert results[request_id]["tokens"] == want[0, len(prompt):].tolist(), request_id
    finally:
        model.generation_config.eos_token_id = eos
        model.set_attn_implementation("appliance_paged")

    assert {results[r]["finish"] for r in bound} == {"stop"}
    jsonschema.validate(json.loads(results["person-greedy"]["text"]), PERSON)
    jsonschema.validate(json.loads(results["person-seeded"]["text"]), PERSON)
    jsonschema.validate(json.loads(results["items-seeded"]["text"]), ITEMS)
    assert re.fullmatch(SUM_REGEX, results["sum-greedy"]["text"])

    roomy = Engine(EngineConfig())
    roomy.load_model(tiny_model_path)
    alone = {r: run(roomy, {r: bound[r]})[r]["tokens"] for r in bound}
    assert {r: results[r]["tokens"] for r in bound} == alone


def test_choice_grammar_escapes_quotes_backslashes_and_control_characters():
    assert choice_grammar(['say "hi"', "a\\b", "x\ny\t\x01"]) == (
        'root ::= "say \\"hi\\"" | "a\\\\b" | "x\\ny\\t\\x01"'
    )
