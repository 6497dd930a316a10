"""Structured output with xgrammar: each spec compiled once per model, enforced by a token bitmask.

The life of a constrained request: AsyncEngine compiles its StructuredOutput on a worker thread
(GrammarCompiler.compile, an LRU cache keyed by the spec's canonical text), so a large schema
never stalls the batch; add_request gives the sequence a GrammarMatcher made from the compiled
grammar; each step the sampler asks a TokenBitmask to set every token the grammar does not allow
next to -inf on the constrained rows (other rows untouched) before anything is sampled; the
accepted token advances the matcher, and once the grammar has ended and EOS was accepted the
matcher is terminated and the request finishes with "stop".

EOS is allowed only where the grammar may end (the matcher's stop tokens are the engine's EOS
ids). min_tokens keeps EOS out while the grammar allows anything else; when EOS is all it allows,
the grammar wins and the request ends early. ignore_eos does not extend a finished grammar.
max_tokens, stop strings and stop_token_ids still end a request early; its output is then a prefix.

Preemption recomputes a sequence's KV from its kept tokens and samples only the position after
them, so no accepted token is ever sampled again and no matcher needs a rollback (a test pins it).
"""

import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import Future

import torch
import xgrammar as xgr

from engine.errors import InvalidParameter
from engine.sampling_params import StructuredOutput

MAX_CACHED_GRAMMARS = 256  # compiled specs kept per model, least recently used dropped first
COMPILE_THREADS = 2  # xgrammar's own threads per compile (these machines have few cores)
# xgrammar (0.2.8 and 0.2.9) lets a string with minLength/maxLength hold raw control characters,
# which JSON forbids; such schemas go through its EBNF text with this character class fixed.
LENGTH_BOUNDED_STRING_CHAR = r'[^\"\\\r\n]'
JSON_STRING_CHAR = r'[^\0-\x1f\"\\]'

CompiledGrammar = xgr.CompiledGrammar
GrammarMatcher = xgr.GrammarMatcher


class GrammarCompiler:
    """Compiles StructuredOutput specs for one model's tokenizer; thread-safe, cached, one compile per key."""

    def __init__(self, tokenizer, vocab_size: int, stop_token_ids: Iterable[int], max_cached: int = MAX_CACHED_GRAMMARS):
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size  # the logits' width, which may exceed the tokenizer's
        self._stop_token_ids = sorted(stop_token_ids) or None  # None: xgrammar takes the tokenizer's EOS
        self._max_cached = max_cached
        self._compiler: xgr.GrammarCompiler | None = None  # built on first use (about 0.2 s for 49k tokens)
        self._cache: OrderedDict[str, Future] = OrderedDict()
        self._lock = threading.Lock()  # guards the cache; never held while compiling
        self._build_lock = threading.Lock()
        self.num_compiled = 0

    def compile(self, spec: StructuredOutput) -> xgr.CompiledGrammar:
        """The compiled grammar for spec; raises InvalidParameter("structured_output", why) if it is invalid."""
        with self._lock:
            future = self._cache.get(spec.key)
            owner = future is None
            if owner:
                future = self._cache[spec.key] = Future()
                while len(self._cache) > self._max_cached:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(spec.key)
        if owner:  # compile outside the lock; callers of the same spec wait on the future
            try:
                future.set_result(self._compile(spec))
            except BaseException as e:
                with self._lock:
                    if self._cache.get(spec.key) is future:
                        del self._cache[spec.key]  # a refused spec is not kept
                future.set_exception(e)
        return future.result()

    def _compile(self, spec: StructuredOutput) -> xgr.CompiledGrammar:
        compiler = self._xgrammar_compiler()
        try:
            return compiler.compile_grammar(spec_grammar(spec))
        finally:
            with self._lock:
                self.num_compiled += 1

    def _xgrammar_compiler(self) -> xgr.GrammarCompiler:
        with self._build_lock:
            if self._compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(
                    self._tokenizer, vocab_size=self._vocab_size, stop_token_ids=self._stop_token_ids
                )
                # Our LRU is the one cache: xgrammar's own would grow without bound.
                self._compiler = xgr.GrammarCompiler(info, max_threads=COMPILE_THREADS, cache_enabled=False)
            return self._compiler


def spec_grammar(spec: StructuredOutput) -> xgr.Grammar:
    """The spec as an xgrammar Grammar: what GrammarCompiler compiles, and what a larger grammar embeds (gpt-oss's
    answer is held from where its final channel opens: appliance.serving.formats.harmony).
    InvalidParameter("structured_output", why) when xgrammar refuses it."""
    try:
        if spec.json is not None:
            return _json_schema_grammar(spec)
        if spec.json_object:
            return xgr.Grammar.from_json_schema('{"type": "object"}', strict_mode=False, **_whitespace(spec))
        if spec.regex is not None:
            return xgr.Grammar.from_regex(spec.regex)
        return xgr.Grammar.from_ebnf(choice_grammar(spec.choice) if spec.choice is not None else spec.grammar)
    except RuntimeError as e:
        raise InvalidParameter("structured_output", f"invalid {spec.kind}: {_readable(e)}") from None


def _json_schema_grammar(spec: StructuredOutput) -> xgr.Grammar:
    grammar = xgr.Grammar.from_json_schema(spec.json, strict_mode=spec.strict, **_whitespace(spec))
    if '"maxLength"' not in spec.key and '"minLength"' not in spec.key:
        return grammar
    return xgr.Grammar.from_ebnf(str(grammar).replace(LENGTH_BOUNDED_STRING_CHAR, JSON_STRING_CHAR))


def _whitespace(spec: StructuredOutput) -> dict:
    return {"any_whitespace": True} if spec.any_whitespace else {"any_whitespace": False, "separators": (", ", ": ")}


def choice_grammar(choices: list[str]) -> str:
    """An EBNF grammar whose only sentences are the choices, as vLLM builds it."""

    def literal(text: str) -> str:
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
        escaped = re.sub(r"[\x00-\x1f]", lambda m: f"\\x{ord(m.group()):02x}", escaped.replace("\t", "\\t"))
        return f'"{escaped}"'

    return "root ::= " + " | ".join(literal(c) for c in choices)


def _readable(error: RuntimeError) -> str:
    """xgrammar's message without its C++ location and assertion text, and without echoing the input."""
    text = str(error).strip()
    text = re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", text)
    text = re.sub(r"^Check failed: \(.*?\) is false: ", "", text)
    return text.split(". The JSON string is:")[0]


class TokenBitmask:
    """One int32 bitmask row per batch row (on the CPU, where xgrammar fills it), reused every step.

    vocab_size is the logits' width, the model's vocabulary, which GrammarCompiler gave xgrammar:
    ids beyond the tokenizer's (padding) are never allowed. Any float dtype, CPU or CUDA logits."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self._bitmask = xgr.allocate_token_bitmask(0, vocab_size)
        self._batch = xgr.BatchGrammarMatcher(max_threads=1)  # one C++ call for all rows, no Python per row

    def apply(self, logits: torch.Tensor, rows: Sequence[int], matchers: Sequence[GrammarMatcher]) -> None:
        """Set logits[row, t] = -inf for every token t that matchers[i] does not allow, rows[i] = row."""
        if len(self._bitmask) < len(logits):
            self._bitmask = xgr.allocate_token_bitmask(max(len(logits), 2 * len(self._bitmask)), self.vocab_size)
            if logits.is_cuda:
                self._bitmask = self._bitmask.pin_memory()
        self._batch.batch_fill_next_token_bitmask(list(matchers), self._bitmask, list(rows))
        bitmask = self._bitmask[: len(logits)]
        if bitmask.device != logits.device:
            bitmask = bitmask.to(logits.device, non_blocking=True)
        xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=self.vocab_size, indices=list(rows))
