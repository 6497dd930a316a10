"""The engine: add_request / abort / step, tying scheduler, model runner, sampler and detokenizer.

Not thread-safe: one thread drives it (see async_engine for the asyncio side).
"""

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PretrainedConfig

from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.detokenizer import IncrementalDetokenizer
from engine.errors import DuplicateRequest, InvalidParameter, NoModelLoaded, PromptTooLong
from engine.loader import LoadedModel, load_model
from engine.model_runner import ModelRunner
from engine.prompt_logprobs import add_prompt_logprobs, prompt_positions
from engine.sampler import SampledToken, Sampler
from engine.sampling_params import SamplingParams, StructuredOutput
from engine.scheduler import Scheduler
from engine.sequence import Sequence
from engine.structured_output import CompiledGrammar, GrammarCompiler, GrammarMatcher


@dataclass
class RequestOutput:
    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool
    finish_reason: str | None  # "stop", "length" or "abort"
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int
    logprobs: list[SampledToken] = field(default_factory=list)
    # With params.prompt_logprobs, on the first output only: one per prompt token, the first with logprob None
    prompt_logprobs: list[SampledToken] | None = None
    stop_reason: str | int | None = None  # the stop string or stop token that ended it
    arrival_time: float = 0.0
    first_scheduled_time: float | None = None
    first_token_time: float | None = None


@dataclass
class EngineStats:
    model: str | None
    num_waiting: int
    num_running: int
    kv_blocks_used: int
    kv_blocks_total: int
    kv_usage: float
    block_size: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int
    prompt_tokens_total: int
    generation_tokens_total: int
    steps_total: int
    last_step_time: float  # time.monotonic() of the last step that ran
    execution: dict | None = None  # ModelRunner.execution() of the loaded model
    structured_output_requests: int = 0  # requests added with a grammar or schema


def _checked_token_ids(ids: list[int], vocab: int, param: str) -> list[int]:
    if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab for t in ids):
        raise InvalidParameter(param, f"token ids must be integers in [0, {vocab})")
    return list(ids)


class _Session:
    """What exists only while a model is loaded."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig):
        self.loaded = loaded
        self.runner = ModelRunner(loaded, config)
        self.block_manager = BlockManager(self.runner.num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(
            self.block_manager, config.max_num_seqs, config.max_num_batched_tokens, config.max_waiting_requests
        )
        eos = loaded.model.generation_config.eos_token_id if loaded.model.generation_config else None
        if eos is None:
            eos = loaded.config.eos_token_id
        self.eos_token_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.sampler = Sampler(self.eos_token_ids)
        self.max_model_len = self.runner.max_model_len
        self.grammars = (
            GrammarCompiler(loaded.tokenizer, loaded.config.vocab_size, self.eos_token_ids)
            if loaded.tokenizer is not None
            else None
        )


class Engine:
    def __init__(self, config: EngineConfig | None = None):
        self.config = config or EngineConfig()
        self.session: _Session | None = None
        self.sequences: dict[str, Sequence] = {}
        self.detokenizers: dict[str, IncrementalDetokenizer] = {}
        self.matchers: dict[str, GrammarMatcher] = {}  # beside each constrained sequence
        self.grammar_starts: dict[str, int] = {}  # request -> the token after which its grammar holds
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.structured_output_requests = 0
        self.steps_total = 0
        self.last_step_time = time.monotonic()

    # -- model ---------------------------------------------------------------------------------
    def load_model(self, source: str | Path | PretrainedConfig) -> LoadedModel:
        """Load a model (replacing any loaded one, which must have no requests left)."""
        loaded = load_model(source, self.config.torch_dtype, self.config.device)
        self.unload_model()
        self.session = _Session(loaded, self.config)
        return loaded

    def unload_model(self) -> None:
        if self.sequences:
            raise RuntimeError(f"{len(self.sequences)} requests are still in the engine; abort or finish them first")
        self.session = None
        if self.config.device.startswith("cuda"):
            torch.cuda.empty_cache()

    @property
    def model_name(self) -> str | None:
        return self.session.loaded.name if self.session else None

    @property
    def kv_cache_bytes(self) -> int:
        return self._session().runner.kv_cache_bytes

    @property
    def tokenizer(self):
        return self.session.loaded.tokenizer if self.session else None

    @property
    def max_model_len(self) -> int:
        return self._session().max_model_len

    def _session(self) -> _Session:
        if self.session is None:
            raise NoModelLoaded("no model is loaded; load one first")
        return self.session

    # -- requests ------------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams) -> int:
        """Queue a request; returns its prompt length. Raises on bad input or a full queue."""
        session = self._session()
        if request_id in self.sequences:
            raise DuplicateRequest(f"request id {request_id!r} is already in the engine")
        tokenizer = session.loaded.tokenizer
        vocab = session.loaded.config.vocab_size
        if isinstance(prompt, str):
            if tokenizer is None:
                raise InvalidParameter("prompt", "this model has no tokenizer; send token ids")
            prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
        else:
            prompt_ids = _checked_token_ids(prompt, vocab, "prompt")
        if not prompt_ids:
            raise InvalidParameter("prompt", "the prompt is empty")
        if len(prompt_ids) >= session.max_model_len:
            raise PromptTooLong(len(prompt_ids), session.max_model_len)
        after = params.structured_output.after_token_id if params.structured_output is not None else None
        if after is not None and after >= vocab:
            raise InvalidParameter("structured_output", f"after_token_id must be below the vocabulary size {vocab}")
        if any(t >= vocab for t in params.stop_token_ids):
            raise InvalidParameter("stop_token_ids", f"stop_token_ids must be below the vocabulary size {vocab}")
        outside = sorted(t for t in params.logit_bias if t >= vocab)
        if outside:
            raise InvalidParameter("logit_bias", f"logit_bias names token ids outside the vocabulary (size {vocab}): "
                                                 f"{', '.join(map(str, outside))}")
        if params.stop and tokenizer is None:
            raise InvalidParameter("stop", "stop strings need a tokenizer; this model has none")
        grammar = self.compile_structured_output(params.structured_output) if params.structured_output else None
        seq = Sequence(request_id, prompt_ids, params)
        session.scheduler.add(seq)
        self.sequences[request_id] = seq
        if grammar is not None:
            self.matchers[request_id] = GrammarMatcher(grammar)
            self.structured_output_requests += 1
            if params.structured_output.after_token_id is not None:
                self.grammar_starts[request_id] = params.structured_output.after_token_id
        if tokenizer is not None:
            self.detokenizers[request_id] = IncrementalDetokenizer(
                tokenizer, prompt_ids, params.stop, params.skip_special_tokens, params.kept_special_token_ids
            )
        return len(prompt_ids)

    def compile_structured_output(self, spec: StructuredOutput) -> CompiledGrammar:
        """The spec's grammar for the loaded model, from its cache or compiled now; any thread may call it."""
        grammars = self._session().grammars
        if grammars is None:
            raise InvalidParameter("structured_output", "structured output needs a tokenizer; this model has none")
        return grammars.compile(spec)

    def embed(self, prompts: list[list[int]]) -> list[list[float]]:
        """Mean-pooled hidden states, one vector per prompt of token ids."""
        session = self._session()
        for ids in prompts:
            _checked_token_ids(ids, session.loaded.config.vocab_size, "input")
            if not ids:
                raise InvalidParameter("input", "an input is empty")
            if len(ids) > session.max_model_len:
                raise PromptTooLong(len(ids), session.max_model_len)
        return [session.runner.embed(ids) for ids in prompts]

    def abort(self, request_id: str) -> bool:
        """Stop a request and free its KV blocks now. False if it is not in the engine."""
        seq = self.sequences.pop(request_id, None)
        if seq is None:
            return False
        self.detokenizers.pop(request_id, None)
        self.matchers.pop(request_id, None)
        self.grammar_starts.pop(request_id, None)
        self._session().scheduler.finish(seq, "abort")
        return True

    def has_unfinished(self) -> bool:
        return bool(self.sequences)

    # -- the step ------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        session = self._session()
        plan = session.scheduler.schedule()
        if plan.is_empty:
            return []
        now = time.monotonic()
        sampling = [s for s in plan.scheduled if s.completes_prompt]
        logits = session.runner.execute(plan.scheduled)
        row = len(sampling)
        for s in plan.scheduled:  # the rows after the sampling ones: prompt logprobs, in order
            count = len(prompt_positions(s))
            if count:
                add_prompt_logprobs(s, logits[row: row + count])
                row += count
        logits = logits[: len(sampling)]
        for s in plan.scheduled:
            if s.seq.first_scheduled_time is None:
                s.seq.first_scheduled_time = now
                self.prompt_tokens_total += s.seq.num_prompt_tokens
            s.seq.num_computed_tokens += s.num_new_tokens
            session.block_manager.cache_full_blocks(s.seq)
        matchers = [self.active_matcher(s.seq.request_id) for s in sampling] if self.matchers else None
        sampled = session.sampler(logits, [s.seq for s in sampling], matchers) if sampling else []
        self.steps_total += 1
        self.last_step_time = time.monotonic()
        return [self._advance(s.seq, token) for s, token in zip(sampling, sampled)]

    def active_matcher(self, request_id: str) -> GrammarMatcher | None:
        """The request's matcher, once its grammar holds (after its after_token_id, when it has one)."""
        return None if request_id in self.grammar_starts else self.matchers.get(request_id)

    def _advance(self, seq: Sequence, token: SampledToken) -> RequestOutput:
        session = self._session()
        seq.append_token(token.token_id)
        self.generation_tokens_total += 1
        if seq.first_token_time is None:
            seq.first_token_time = self.last_step_time
        params = seq.params
        num_cached = seq.num_cached_tokens  # freeing the blocks at the finish resets it
        detok = self.detokenizers.get(seq.request_id)
        text, finish, stop_reason = "", None, None
        if detok is not None:
            delta = detok.append(token.token_id)
            text = delta.text
            if delta.stop_string is not None:
                finish, stop_reason = "stop", delta.stop_string
        num_out = len(seq.output_token_ids)
        matcher = self.active_matcher(seq.request_id)
        if self.grammar_starts.get(seq.request_id) == token.token_id:
            del self.grammar_starts[seq.request_id]  # the grammar holds from the next token on
        if finish is None and matcher is not None:
            if not matcher.accept_token(token.token_id):  # the bitmask allowed it: never expected
                finish, stop_reason = "abort", f"the grammar refused token {token.token_id}"
            elif matcher.is_terminated():  # the grammar ended and EOS followed; before min_tokens
                finish = "stop"
        if finish is None and num_out >= params.min_tokens:
            if token.token_id in params.stop_token_ids:
                finish, stop_reason = "stop", token.token_id
            elif not params.ignore_eos and token.token_id in session.eos_token_ids:
                finish = "stop"
        if finish is None and (num_out >= params.max_tokens or seq.num_tokens >= session.max_model_len):
            finish = "length"
        if finish is not None:
            if detok is not None and not isinstance(stop_reason, str):
                text += detok.flush()
            session.scheduler.finish(seq, finish)
            del self.sequences[seq.request_id]
            self.detokenizers.pop(seq.request_id, None)
            self.matchers.pop(seq.request_id, None)
            self.grammar_starts.pop(seq.request_id, None)
        return RequestOutput(
            request_id=seq.request_id,
            new_token_ids=[token.token_id],
            new_text=text,
            finished=finish is not None,
            finish_reason=finish,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_output_tokens=num_out,
            num_cached_tokens=num_cached,
            logprobs=[token] if params.logprobs is not None else [],
            prompt_logprobs=[SampledToken(seq.prompt_token_ids[0])] + seq.prompt_logprobs
            if params.prompt_logprobs is not None and num_out == 1 else None,
            stop_reason=stop_reason,
            arrival_time=seq.arrival_time,
            first_scheduled_time=seq.first_scheduled_time,
            first_token_time=seq.first_token_time,
        )

    def stats(self) -> EngineStats:
        s = self.session
        bm = s.block_manager if s else None
        return EngineStats(
            model=self.model_name,
            num_waiting=len(s.scheduler.waiting) if s else 0,
            num_running=len(s.scheduler.running) if s else 0,
            kv_blocks_used=bm.num_blocks - bm.num_free_blocks if bm else 0,
            kv_blocks_total=bm.num_blocks if bm else 0,
            kv_usage=bm.usage if bm else 0.0,
            block_size=self.config.block_size,
            prefix_cache_queries=bm.prefix_queries if bm else 0,
            prefix_cache_hits=bm.prefix_hits if bm else 0,
            num_preemptions=s.scheduler.num_preemptions if s else 0,
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total,
            structured_output_requests=self.structured_output_requests,
            steps_total=self.steps_total,
            last_step_time=self.last_step_time,
            execution=s.runner.execution() if s else None,
        )
