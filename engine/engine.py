"""The engine: add_request / abort / step, tying scheduler, model runner, sampler and detokenizer.

Not thread-safe: one thread drives it (see async_engine for the asyncio side).
"""

import time
from pathlib import Path

import torch
from transformers import PretrainedConfig

from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.detokenizer import IncrementalDetokenizer
from engine.errors import DuplicateRequest, InvalidParameter, NoModelLoaded, PromptTooLong
from engine.loader import LoadedModel, load_model
from engine.model_runner import ModelRunner
from engine.outputs import EngineStats, RequestOutput
from engine.overlap import InFlightStep, overlappable, placeholder
from engine.prompt_images import PromptImages
from engine.prompt_logprobs import add_prompt_logprobs, prompt_positions
from engine.sampler import SampledToken, Sampler
from engine.sampling_params import SamplingParams, StructuredOutput
from engine.scheduler import ScheduledSequence, Scheduler
from engine.sequence import Sequence
from engine.structured_output import CompiledGrammar, GrammarCompiler, GrammarMatcher


def _checked_token_ids(ids: list[int], vocab: int, param: str) -> list[int]:
    if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab for t in ids):
        raise InvalidParameter(param, f"token ids must be integers in [0, {vocab})")
    return list(ids)


class _Session:
    """What exists only while a model is loaded."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig):
        self.loaded = loaded
        self.runner = ModelRunner(loaded, config)
        states = self.runner.states
        per_block = loaded.layout.block_bytes(config.block_size, self.runner.kv_dtype.itemsize)
        self.block_manager = BlockManager(
            self.runner.num_blocks, config.block_size, self.runner.caches_prefixes,
            loaded.layout.specs(), num_state_slots=states.num_slots if states is not None else 0,
            state_slot_blocks=states.row_bytes / per_block if states is not None else 0.0,
            num_state_snapshots=states.num_snapshots if states is not None else 0)
        self.scheduler = Scheduler(
            self.block_manager, config.max_num_seqs, config.max_num_batched_tokens, config.max_waiting_requests,
            self.runner.max_num_encoder_tokens, self.runner.encoder_cache.holds,
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
        self.in_flight: InFlightStep | None = None  # the launched step whose tokens are not read yet
        self.num_sequential = 0  # requests in the engine that async scheduling cannot take (engine.overlap)
        self.steps_total = 0
        self.last_step_time = time.monotonic()

    # -- model ---------------------------------------------------------------------------------
    def load_model(self, source: str | Path | PretrainedConfig) -> LoadedModel:
        """Load a model (replacing any loaded one, which must have no requests left)."""
        loaded = load_model(source, self.config.torch_dtype, self.config.device, self.config.quantization)
        self.unload_model()
        self.session = _Session(loaded, self.config)
        return loaded

    def unload_model(self) -> None:
        if self.sequences:
            raise RuntimeError(f"{len(self.sequences)} requests are still in the engine; abort or finish them first")
        self.session = None
        self.in_flight = None
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
    @property
    def takes_images(self) -> bool:
        """The loaded model reads images (engine.vision)."""
        return self.session is not None and self.session.runner.vision is not None

    def prepare_images(self, prompt: str, images: list) -> tuple[list[int], PromptImages]:
        """A prompt with images (PIL images, one placeholder each in the prompt) as token ids and the images the
        sequence keeps: the model's processor runs here, on any thread, not the engine's."""
        session = self._session()
        if session.runner.vision is None:
            raise InvalidParameter("images", f"{session.loaded.name} takes no images")
        return session.runner.vision.prepare(prompt, images)

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams,
                    images: PromptImages | None = None) -> int:
        """Queue a request; returns its prompt length. Raises on bad input or a full queue.

        images: from prepare_images, whose token ids are then the prompt."""
        session = self._session()
        if request_id in self.sequences:
            raise DuplicateRequest(f"request id {request_id!r} is already in the engine")
        tokenizer = session.loaded.tokenizer
        vocab = session.loaded.config.vocab_size
        if images is not None and session.runner.vision is None:
            raise InvalidParameter("images", f"{session.loaded.name} takes no images")
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
        seq = Sequence(request_id, prompt_ids, params, images)
        session.scheduler.add(seq)
        self.sequences[request_id] = seq
        self.num_sequential += not overlappable(params)
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
        seq = self.sequences.get(request_id)
        if seq is None:
            return False
        self._remove(self._session(), seq, "abort")
        return True

    def has_unfinished(self) -> bool:
        return bool(self.sequences)

    # -- the step ------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """One step: the outputs of the requests that got a token. With async scheduling, the
        tokens of the step launched by the previous call (engine.overlap)."""
        session = self._session()
        try:
            if self.config.overlaps_steps and not self.num_sequential:
                return self._step_overlapped(session)
            outputs = []
            if self.in_flight is not None:  # a request that needs steps one by one has come in
                outputs, self.in_flight = self._land(session, self.in_flight), None
            return outputs + self._step_sequential(session)
        except BaseException:
            self.in_flight = None  # its placeholders go with the requests the caller aborts
            raise

    def _step_sequential(self, session: _Session) -> list[RequestOutput]:
        plan = session.scheduler.schedule()
        if plan.is_empty:
            return []
        sampling = [s for s in plan.scheduled if s.completes_prompt]
        scheduled_at = time.monotonic()
        logits = session.runner.execute(plan.scheduled, state_copies=session.block_manager.take_state_copies())
        row = len(sampling)
        for s in plan.scheduled:
            if s.seq.params.prompt_logprobs is not None:  # its rows follow the sampling ones, in order
                count = len(prompt_positions(s))
                add_prompt_logprobs(s, logits[row: row + count])
                row += count
        self._account(session, plan.scheduled, scheduled_at)
        logits = logits[: len(sampling)]
        matchers = [self.active_matcher(s.seq.request_id) for s in sampling] if self.matchers else None
        sampled = session.sampler(logits, [s.seq for s in sampling], matchers) if sampling else []
        outputs = []
        for s, token in zip(sampling, sampled):
            s.seq.append_token(token.token_id)
            outputs.append(self._advance(session, s.seq, token))
        return outputs

    def _step_overlapped(self, session: _Session) -> list[RequestOutput]:
        """Launch the next step, then read and process the previous one's tokens while it runs."""
        plan = session.scheduler.schedule()
        previous, self.in_flight = self.in_flight, None
        launched = None
        if not plan.is_empty:
            sampling = [s.seq for s in plan.scheduled if s.completes_prompt]
            scheduled_at = time.monotonic()
            logits = session.runner.execute(plan.scheduled, previous.token_ids if previous is not None else None,
                                            session.block_manager.take_state_copies())
            self._account(session, plan.scheduled, scheduled_at)
            if sampling:
                launched = InFlightStep(sampling, session.sampler.draw(logits[: len(sampling)], sampling))
        outputs = self._land(session, previous) if previous is not None else []
        if launched is not None:
            for row, seq in enumerate(launched.seqs):
                if self.sequences.get(seq.request_id) is seq:  # not finished by the tokens just read
                    seq.append_token(placeholder(row))
            self.in_flight = launched
        return outputs

    def _account(self, session: _Session, scheduled: list[ScheduledSequence], scheduled_at: float) -> None:
        """After a forward: the scheduled tokens are computed; full blocks of real tokens are cached, and recurrent
        states where a prompt's last whole block ends or a decode fills a block (engine.state_snapshots)."""
        bm = session.block_manager
        for s in scheduled:
            seq = s.seq
            if seq.first_scheduled_time is None:
                seq.first_scheduled_time = scheduled_at
                self.prompt_tokens_total += seq.num_prompt_tokens
            seq.num_computed_tokens += s.num_new_tokens
            if seq.token_ids[-1] >= 0:  # a placeholder's block is cached once its token is read
                bm.cache_full_blocks(seq)
            if seq.state_slot is not None:
                bm.keep_states(seq)
        self.steps_total += 1
        self.last_step_time = time.monotonic()

    def _land(self, session: _Session, step: InFlightStep) -> list[RequestOutput]:
        """The launched step's tokens into their requests, skipping those that finished (or were
        aborted) since it was launched: their token is one too many."""
        outputs = []
        token_ids = step.host_token_ids()
        self.last_step_time = time.monotonic()  # when its tokens came: their first_token_time
        for seq, token_id in zip(step.seqs, token_ids):
            if self.sequences.get(seq.request_id) is not seq:
                continue
            seq.fill_last_token(token_id)
            session.block_manager.cache_full_blocks(seq)
            outputs.append(self._advance(session, seq, SampledToken(token_id)))
        return outputs

    def active_matcher(self, request_id: str) -> GrammarMatcher | None:
        """The request's matcher, once its grammar holds (after its after_token_id, when it has one)."""
        return None if request_id in self.grammar_starts else self.matchers.get(request_id)

    def _advance(self, session: _Session, seq: Sequence, token: SampledToken) -> RequestOutput:
        """A request's newest token (appended already): text, stop checks, the output. Runs once per
        request per step, so the common case (no grammar, no stop string matched) takes the fewest steps."""
        token_id = token.token_id
        self.generation_tokens_total += 1
        if seq.first_token_time is None:
            seq.first_token_time = self.last_step_time
        params = seq.params
        num_cached = seq.num_cached_tokens  # freeing the blocks at the finish resets it
        detok = self.detokenizers.get(seq.request_id)
        text, finish, stop_reason = "", None, None
        if detok is not None:
            delta = detok.append(token_id)
            text = delta.text
            if delta.stop_string is not None:
                finish, stop_reason = "stop", delta.stop_string
        num_out = len(seq.output_token_ids)
        if self.matchers and finish is None:
            finish, stop_reason = self._grammar_finish(seq.request_id, token_id)
        if finish is None and num_out >= params.min_tokens:
            if token_id in params.stop_token_ids:
                finish, stop_reason = "stop", token_id
            elif not params.ignore_eos and token_id in session.eos_token_ids:
                finish = "stop"
        if finish is None and (num_out >= params.max_tokens or seq.num_tokens >= session.max_model_len):
            finish = "length"
        if finish is not None:
            if detok is not None and not isinstance(stop_reason, str):
                text += detok.flush()
            self._remove(session, seq, finish)
        return RequestOutput(
            seq.request_id, [token_id], text, finish is not None, finish, seq.num_prompt_tokens, num_out, num_cached,
            logprobs=[token] if params.logprobs is not None else [],
            prompt_logprobs=[SampledToken(seq.prompt_token_ids[0])] + seq.prompt_logprobs
            if params.prompt_logprobs is not None and num_out == 1 else None,
            stop_reason=stop_reason,
            arrival_time=seq.arrival_time,
            first_scheduled_time=seq.first_scheduled_time,
            first_token_time=seq.first_token_time,
        )

    def _grammar_finish(self, request_id: str, token_id: int) -> tuple[str | None, str | None]:
        """Whether the request's grammar ends it with this token: ("stop", None), ("abort", why) or (None, None)."""
        matcher = self.active_matcher(request_id)
        if self.grammar_starts.get(request_id) == token_id:
            del self.grammar_starts[request_id]  # the grammar holds from the next token on
        if matcher is None:
            return None, None
        if not matcher.accept_token(token_id):  # the bitmask allowed it: never expected
            return "abort", f"the grammar refused token {token_id}"
        if matcher.is_terminated():  # the grammar ended and EOS followed; before min_tokens
            return "stop", None
        return None, None

    def _remove(self, session: _Session, seq: Sequence, finish: str) -> None:
        session.scheduler.finish(seq, finish)
        del self.sequences[seq.request_id]
        self.num_sequential -= not overlappable(seq.params)
        self.detokenizers.pop(seq.request_id, None)
        self.matchers.pop(seq.request_id, None)
        self.grammar_starts.pop(seq.request_id, None)

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
            state_slots_used=bm.state_slots.num_slots - bm.state_slots.num_free if bm else 0,
            state_slots_total=bm.state_slots.num_slots if bm else 0,
        )
