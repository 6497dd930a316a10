"""Structured output's cost: throughput of JSON-schema requests vs the same requests unconstrained,
and the compile time of a large schema, cold and cached.

(a) 32 concurrent requests through AsyncEngine on SmolLM2-135M-Instruct, the same chat prompts and
max_tokens, once with a JSON schema and once without. The counts are made equal: the schema asks
for a list of at least 40 records, longer than max_tokens, so every constrained request runs to
max_tokens ("length"), and the unconstrained ones use ignore_eos. Rounds alternate (free,
constrained, free, constrained...) so that a busy machine penalizes both alike. Also printed:
the grammar's share of the engine thread (bitmask fill + apply per step, and accept_token).
(b) compile time of a 100-property schema of mixed types: the tokenizer info (once per model),
a cold compile, and a cached one.

    python -m benchmarks.structured_output [--model PATH] [--max-tokens 128] [--temperature 0] [--rounds 2]
"""

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from engine import AsyncEngine, Engine, EngineConfig, SamplingParams, StructuredOutput
from engine import structured_output

CACHE = Path.home() / ".cache" / "appliance-bench"
NUM_REQUESTS = 32
RECORD = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "email": {"type": "string", "pattern": "^[a-z]{1,12}@[a-z]{1,12}\\.com$"},
        "role": {"enum": ["admin", "user", "guest"]},
        "score": {"type": "number", "minimum": 0, "maximum": 100},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 4},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "email", "role", "score", "tags", "active"],
}
SCHEMA = {
    "type": "object",
    "properties": {"people": {"type": "array", "items": RECORD, "minItems": 40}},
    "required": ["people"],
}


def large_schema(num_properties: int = 100, salt: str = "") -> dict:
    """num_properties of mixed types: strings (some bounded or patterned), numbers, enums, arrays, objects."""
    kinds = [
        {"type": "string"},
        {"type": "integer", "minimum": -1000, "maximum": 1000},
        {"type": "number"},
        {"type": "boolean"},
        {"enum": ["red", "green", "blue", "other"]},
        {"type": "array", "items": {"type": "integer"}, "maxItems": 8},
        {"type": "string", "maxLength": 32},
        {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{4}$"},
        {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}, "required": ["x", "y"]},
        {"type": ["string", "null"]},
    ]
    names = [f"{salt}field_{i:03d}" for i in range(num_properties)]
    return {
        "type": "object",
        "properties": {name: kinds[i % len(kinds)] for i, name in enumerate(names)},
        "required": names[::2],
    }


class GrammarTimer:
    """Wall time the engine thread spends on grammars: TokenBitmask.apply and accept_token."""

    def __init__(self):
        self.apply_s = 0.0
        self.steps = 0
        apply = structured_output.TokenBitmask.apply

        def timed_apply(bitmask, logits, rows, matchers):
            start = time.perf_counter()
            apply(bitmask, logits, rows, matchers)
            self.apply_s += time.perf_counter() - start
            self.steps += 1

        structured_output.TokenBitmask.apply = timed_apply
        self.accept_s = 0.0
        accept = structured_output.GrammarMatcher.accept_token

        def timed_accept(matcher, token_id):
            start = time.perf_counter()
            accepted = accept(matcher, token_id)
            self.accept_s += time.perf_counter() - start
            return accepted

        structured_output.GrammarMatcher.accept_token = timed_accept

    def reset(self):
        self.apply_s, self.accept_s, self.steps = 0.0, 0.0, 0


async def run_round(async_engine: AsyncEngine, prompts: list[str], params: SamplingParams) -> dict:
    async def one(prompt: str):
        last = None
        async for out in async_engine.generate(prompt, params):
            last = out
        return last

    start = time.perf_counter()
    finals = await asyncio.gather(*(one(p) for p in prompts))
    elapsed = time.perf_counter() - start
    tokens = sum(f.num_output_tokens for f in finals)
    return {
        "tokens": tokens,
        "seconds": elapsed,
        "tokens_per_s": tokens / elapsed,
        "finish": sorted({f.finish_reason for f in finals}),
        "lengths": sorted({f.num_output_tokens for f in finals}),
    }


def compile_figures(engine: Engine) -> None:
    grammars = engine.session.grammars
    start = time.perf_counter()
    engine.compile_structured_output(StructuredOutput(regex="x"))  # builds the tokenizer info
    info_ms = 1000 * (time.perf_counter() - start)
    cold, cached = [], []
    for salt in ("a_", "b_", "c_"):
        spec = StructuredOutput(json=large_schema(100, salt))
        start = time.perf_counter()
        engine.compile_structured_output(spec)
        cold.append(1000 * (time.perf_counter() - start))
        equal = StructuredOutput(json=large_schema(100, salt))  # a new request's spec: its key is made here
        start = time.perf_counter()
        engine.compile_structured_output(equal)
        cached.append(1000 * (time.perf_counter() - start))
    assert grammars.num_compiled == 4
    print(f"(b) 100-property schema: tokenizer info (once per model) {info_ms:.0f} ms; "
          f"cold compile median {statistics.median(cold):.1f} ms (runs {', '.join(f'{c:.1f}' for c in cold)}); "
          f"cached {statistics.median(cached) * 1000:.0f} us")


async def throughput_figures(engine: Engine, args) -> None:
    tokenizer = engine.tokenizer
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": f"List forty people of team {i} as JSON records, with name, age, email, "
                                         "role, score, tags and whether they are active."}],
            add_generation_prompt=True, tokenize=False,
        )
        for i in range(NUM_REQUESTS)
    ]
    common = dict(max_tokens=args.max_tokens, temperature=args.temperature, seed=None if args.temperature == 0 else 1)
    free = SamplingParams(ignore_eos=True, **common)
    bound = SamplingParams(structured_output=StructuredOutput(json=SCHEMA, any_whitespace=args.any_whitespace), **common)
    timer = GrammarTimer()
    async_engine = AsyncEngine(engine)
    async_engine.start()
    try:
        await run_round(async_engine, prompts[:4], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))  # warm-up
        results = {"free": [], "json_schema": []}
        apply_s, accept_s, steps = 0.0, 0.0, 0
        for _ in range(args.rounds):
            results["free"].append(await run_round(async_engine, prompts, free))
            timer.reset()
            results["json_schema"].append(await run_round(async_engine, prompts, bound))
            apply_s, accept_s, steps = apply_s + timer.apply_s, accept_s + timer.accept_s, steps + timer.steps
    finally:
        async_engine.shutdown()
    for name, rounds in results.items():
        print(f"    {name:12s} " + "; ".join(
            f"{r['tokens']} tokens in {r['seconds']:.1f} s = {r['tokens_per_s']:.1f} tok/s "
            f"(finish {'/'.join(r['finish'])}, lengths {r['lengths']})" for r in rounds))
    free_tps = statistics.median(r["tokens_per_s"] for r in results["free"])
    bound_tps = statistics.median(r["tokens_per_s"] for r in results["json_schema"])
    total_s = sum(r["seconds"] for r in results["json_schema"])
    pairs = [b["tokens_per_s"] / f["tokens_per_s"] for f, b in zip(results["free"], results["json_schema"])]
    print(f"(a) {NUM_REQUESTS} requests x {args.max_tokens} tokens, temperature {args.temperature}: "
          f"json_schema {bound_tps:.1f} tok/s / unconstrained {free_tps:.1f} tok/s = {bound_tps / free_tps:.3f} "
          f"(medians; round by round {', '.join(f'{p:.3f}' for p in pairs)})")
    print(f"    on the engine thread per step ({steps} steps): bitmask fill + apply {1000 * apply_s / max(steps, 1):.2f} ms, "
          f"accept_token {1000 * accept_s / max(steps, 1):.2f} ms; together "
          f"{100 * (apply_s + accept_s) / total_s:.1f} % of the constrained rounds' time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a model folder (default: the default model, installed once)")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--any-whitespace", action="store_true", help="allow any JSON whitespace (default: one line)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.model is None:
        from appliance.models.default_model import install_default_model

        args.model = install_default_model(CACHE / "models", CACHE / "downloads")
    engine = Engine(EngineConfig(dtype=args.dtype, max_num_seqs=NUM_REQUESTS))
    engine.load_model(args.model)
    print(f"model {args.model.name}, {args.dtype}, CPU threads {__import__('torch').get_num_threads()}")
    compile_figures(engine)
    asyncio.run(throughput_figures(engine, args))


if __name__ == "__main__":
    main()
