"""Turns one step's logits into the next token of each request, as vLLM v1 does.

Order per row: the grammar's token bitmask (constrained rows only); log-probs of those logits
(raw for other rows); min_tokens masking of stop tokens; repetition, frequency and presence
penalties; logit_bias; then greedy argmax, or temperature, min_p, top_k, top_p and a draw. Rows are
independent: a seeded row gets the same token whatever else is batched. A seeded request's
random generator belongs to the sampler, made from params.seed the first time the request is
drawn for and dropped with the request. An unconstrained row's logits are never touched by a
grammar, and a batch without constrained rows keeps the greedy fast path.
"""

import functools
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from engine.overlap import to_device
from engine.sampling_params import SamplingParams
from engine.structured_output import GrammarMatcher, TokenBitmask

NUCLEUS_CANDIDATES = 1024  # where top_p alone looks first for its cutoff
# Below this many logits one thread's argmax is quicker than handing rows to others (~64 rows of a 49k vocabulary).
PARALLEL_ARGMAX_ELEMENTS = 1 << 22


@dataclass
class SampledToken:
    token_id: int
    logprob: float | None = None  # of the chosen token, when params.logprobs is not None
    top_logprobs: list[tuple[int, float]] | None = None  # params.logprobs best (id, logprob), best first


class SamplingRequest(Protocol):
    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]


class Sampler:
    def __init__(self, eos_token_ids: set[int]):
        self.eos_token_ids = sorted(eos_token_ids)
        # Keyed by the request object itself: a preempted request keeps its place in its sequence
        # of draws, and a finished one takes its generator with it.
        self._generators: weakref.WeakKeyDictionary[SamplingRequest, torch.Generator] = weakref.WeakKeyDictionary()
        self._bitmask: TokenBitmask | None = None

    def __call__(
        self,
        logits: torch.Tensor,
        requests: Sequence[SamplingRequest],
        matchers: Sequence[GrammarMatcher | None] | None = None,
    ) -> list[SampledToken]:
        """logits: [len(requests), vocab], any float dtype, one row per request.

        matchers: each row's grammar matcher, None for an unconstrained row (or None for all)."""
        constrained = [] if matchers is None else [i for i, m in enumerate(matchers) if m is not None]
        if not constrained and all(_plain_greedy(r) for r in requests):
            # The hot path of a greedy benchmark: one argmax for the whole batch.
            return [SampledToken(t) for t in _argmax_rows(logits).tolist()]

        # A float32 copy: the steps below edit it in place and the caller's tensor must not change.
        logits = logits.to(torch.float32, copy=True)
        if constrained:
            if self._bitmask is None or self._bitmask.vocab_size != logits.shape[1]:
                self._bitmask = TokenBitmask(logits.shape[1])
            self._bitmask.apply(logits, constrained, [matchers[i] for i in constrained])
        logprob_rows = [i for i, r in enumerate(requests) if r.params.logprobs is not None]
        # vLLM's default "raw_logprobs": the model's distribution, before penalties and temperature
        # (after the grammar's mask, as in vLLM, where it is applied before the sampler).
        logprobs = torch.log_softmax(logits[logprob_rows], dim=-1) if logprob_rows else None

        self._mask_stop_tokens(logits, requests, constrained)
        _apply_penalties(logits, requests)
        _apply_logit_bias(logits, requests)
        token_ids = self.draw(logits, requests)
        sampled = [SampledToken(t) for t in token_ids.tolist()]
        if logprobs is not None:
            _attach_logprobs(sampled, logprobs, logprob_rows, token_ids, requests)
        return sampled

    def draw(self, logits: torch.Tensor, requests: Sequence[SamplingRequest]) -> torch.Tensor:
        """Each row's token id, left on the logits' device: the argmax for greedy rows, a draw for
        the others. The whole of sampling for requests that need nothing else (engine.overlap)."""
        token_ids = _argmax_rows(logits)
        random_rows = [i for i, r in enumerate(requests) if not r.params.greedy]
        if random_rows:
            random_requests = [requests[i] for i in random_rows]
            generators = [self._generator(r) for r in random_requests]
            rows = to_device(torch.tensor(random_rows), logits.device)  # a list index would be a blocking copy
            token_ids[rows] = _sample_random(logits[rows].float(), random_requests, generators)
        return token_ids

    def _generator(self, r: SamplingRequest) -> torch.Generator | None:
        if r.params.seed is None:
            return None
        generator = self._generators.get(r)
        if generator is None:
            generator = self._generators[r] = torch.Generator().manual_seed(r.params.seed % 2**64)
        return generator

    def _mask_stop_tokens(self, logits: torch.Tensor, requests: Sequence[SamplingRequest], constrained: list[int]):
        """Until a request has min_tokens outputs, it must not end: EOS and its stop ids get -inf.

        Except where a grammar allows nothing but a stop token: the grammar wins, the row keeps them."""
        rows, cols = [], []
        for i, r in enumerate(requests):
            if len(r.output_token_ids) < r.params.min_tokens:
                stop_ids = self.eos_token_ids + r.params.stop_token_ids
                rows += [i] * len(stop_ids)
                cols += stop_ids
        if not rows:
            return
        kept = logits[rows, cols]
        logits[rows, cols] = float("-inf")
        checked = sorted(set(rows) & set(constrained))
        if checked:
            ended = {checked[j] for j in (logits[checked].amax(dim=-1) == float("-inf")).nonzero().flatten().tolist()}
            restore = [j for j, row in enumerate(rows) if row in ended]
            if restore:
                logits[[rows[j] for j in restore], [cols[j] for j in restore]] = kept[restore]


def _argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """Each row's argmax (the first, on ties). On CPU numpy's is 3-4x faster than torch's over
    [256, 49152] float32 rows (6 ms against 18-25 ms), the largest host cost of a greedy step;
    a large batch splits its rows over torch's threads (numpy lets go of the GIL): 3.5 ms on 2."""
    if logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.float16):
        rows = logits.detach().numpy()
        threads = min(torch.get_num_threads(), rows.shape[0])
        if threads < 2 or rows.size < PARALLEL_ARGMAX_ELEMENTS:
            return torch.from_numpy(rows.argmax(axis=-1))
        parts = np.array_split(rows, threads)
        return torch.from_numpy(np.concatenate(list(_argmax_pool(threads).map(_row_argmax, parts))))
    return logits.argmax(dim=-1)


def _row_argmax(rows: np.ndarray) -> np.ndarray:
    return rows.argmax(axis=-1)


@functools.cache
def _argmax_pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="argmax")


def _plain_greedy(r: SamplingRequest) -> bool:
    p = r.params
    return (
        p.greedy
        and not p.has_penalties
        and p.logprobs is None
        and not p.logit_bias
        and len(r.output_token_ids) >= p.min_tokens
    )


def _apply_penalties(logits: torch.Tensor, requests: Sequence[SamplingRequest]):
    rows = [i for i, r in enumerate(requests) if r.params.has_penalties]
    if not rows:
        return
    penalized = [requests[i] for i in rows]
    vocab_size, device = logits.shape[1], logits.device

    def column(values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=device).unsqueeze(1)

    output_counts = _token_counts([r.output_token_ids for r in penalized], vocab_size, device)
    in_output = output_counts > 0
    seen = in_output | (_token_counts([r.prompt_token_ids for r in penalized], vocab_size, device) > 0)
    x = logits[rows]
    # Repetition penalty (CTRL paper, as vLLM and HF): over prompt and output tokens.
    repetition = column([r.params.repetition_penalty for r in penalized])
    x = torch.where(seen, torch.where(x > 0, x / repetition, x * repetition), x)
    # Frequency and presence penalties (OpenAI definitions): over output tokens only.
    x -= column([r.params.frequency_penalty for r in penalized]) * output_counts
    x -= column([r.params.presence_penalty for r in penalized]) * in_output
    logits[rows] = x


def _apply_logit_bias(logits: torch.Tensor, requests: Sequence[SamplingRequest]):
    """Each request's biases added to its row (OpenAI's logit_bias); the token ids are checked against the
    vocabulary when the request is added."""
    rows, cols, values = [], [], []
    for i, r in enumerate(requests):
        for token_id, bias in r.params.logit_bias.items():
            rows.append(i)
            cols.append(token_id)
            values.append(float(bias))
    if rows:
        logits[rows, cols] += torch.tensor(values, dtype=logits.dtype, device=logits.device)


def _token_counts(token_lists: list[list[int]], vocab_size: int, device: torch.device) -> torch.Tensor:
    """[len(token_lists), vocab_size] float counts of each token id in each list."""
    width = max(map(len, token_lists))
    # Lists are padded with the id vocab_size, counted in a spare column that is then dropped.
    padded = [ids + [vocab_size] * (width - len(ids)) for ids in token_lists]
    ids = torch.tensor(padded, dtype=torch.long, device=device).reshape(len(token_lists), width)
    counts = torch.zeros(len(token_lists), vocab_size + 1, device=device)
    counts.scatter_add_(1, ids, torch.ones(ids.shape, device=device))
    return counts[:, :vocab_size]


def _sample_random(
    logits: torch.Tensor, requests: list[SamplingRequest], generators: list[torch.Generator | None]
) -> torch.Tensor:
    device = logits.device

    def column(values: list) -> torch.Tensor:
        return to_device(torch.tensor(values), device).unsqueeze(1)

    logits = logits / column([float(r.params.temperature) for r in requests])
    min_p = [r.params.min_p for r in requests]
    if any(min_p):
        probs = logits.softmax(dim=-1)
        threshold = column(min_p) * probs.amax(dim=-1, keepdim=True)
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    top_k = [r.params.top_k for r in requests]
    top_p = [r.params.top_p for r in requests]
    if any(top_k) or min(top_p) < 1.0:
        logits = _top_k_top_p(logits, top_k, column(top_p))
    probs = logits.softmax(dim=-1)
    # Gumbel-style draw: argmax(p / q) with q ~ Exp(1) picks token i with probability p_i.
    return probs.div_(_exponential_noise(probs.shape, generators, device)).argmax(dim=-1)


def _top_k_top_p(logits: torch.Tensor, top_k: list[int], top_p: torch.Tensor) -> torch.Tensor:
    """Keeps each row's top_k best logits, then of those the nucleus holding top_p of the mass.

    Both filters become one cutoff logit per row, found among the best candidates sorted best
    first; ties with the cutoff are kept. A row without top_k looks among its NUCLEUS_CANDIDATES
    best first and is sorted in full only when its nucleus reaches past them (a flat distribution):
    a full sort costs about 0.3 s for 64 rows of 49k on CPU.
    """
    vocab_size = logits.shape[1]
    if all(top_k):
        head = min(max(top_k), vocab_size)  # holds every row's top_k: complete by construction
    elif logits.is_cuda:
        head = vocab_size  # on a GPU a full sort costs less than the host sync that checks a short list
    else:
        head = min(NUCLEUS_CANDIDATES, vocab_size)
    cutoff, complete = _cutoff(logits, top_k, top_p, head)
    if not all(top_k) and head < vocab_size and not complete.all():
        rows = (~complete).nonzero().squeeze(1)
        cutoff[rows], _ = _cutoff(logits[rows], [top_k[r] for r in rows.tolist()], top_p[rows], vocab_size)
    return logits.masked_fill(logits < cutoff, float("-inf"))


def _cutoff(logits: torch.Tensor, top_k: list[int], top_p: torch.Tensor, candidates: int):
    """Each row's cutoff logit among its `candidates` best, and whether those were enough to find it."""
    vocab_size, device = logits.shape[1], logits.device
    values = logits.topk(candidates, dim=-1).values
    has_k = to_device(torch.tensor([bool(k) for k in top_k]), device).unsqueeze(1)
    k = to_device(torch.tensor([k or vocab_size for k in top_k]), device).unsqueeze(1)
    values = values.masked_fill(torch.arange(candidates, device=device) >= k, float("-inf"))
    # A candidate's probability among its row's top_k, or among the whole vocabulary without one.
    norm = torch.where(has_k, values.logsumexp(dim=-1, keepdim=True), logits.logsumexp(dim=-1, keepdim=True))
    probs = (values - norm).exp()
    # As vLLM: drop a candidate when it and all worse ones hold at most 1 - top_p of the mass, i.e.
    # keep it while the better ones hold less than top_p; the best one always stays.
    keep = probs.cumsum(dim=-1) - probs < top_p
    keep[:, 0] = True
    # Enough candidates: all of a row's top_k, or a nucleus that ends before the last of them.
    complete = torch.where(has_k, k <= candidates, ~keep[:, -1:]).squeeze(1) | (candidates == vocab_size)
    cutoff = values.gather(1, keep.sum(dim=-1, keepdim=True) - 1)
    return cutoff, complete


def _exponential_noise(
    shape: torch.Size, generators: list[torch.Generator | None], device: torch.device
) -> torch.Tensor:
    noise = torch.empty(shape, device=device)
    unseeded = [i for i, g in enumerate(generators) if g is None]
    if unseeded:  # a device index: a list index would be a blocking copy (engine.overlap)
        noise[to_device(torch.tensor(unseeded), device)] = torch.empty(len(unseeded), shape[1], device=device).exponential_()
    for i, g in enumerate(generators):
        if g is not None:
            # Drawn where the generator lives (the CPU), then moved.
            noise[i] = torch.empty(shape[1], device=g.device).exponential_(generator=g)
    # A zero draw would turn a filtered token's 0 / 0 into NaN, which argmax would pick.
    return noise.clamp_(min=torch.finfo(noise.dtype).tiny)


def _attach_logprobs(
    sampled: list[SampledToken],
    logprobs: torch.Tensor,
    rows: list[int],
    token_ids: torch.Tensor,
    requests: Sequence[SamplingRequest],
):
    chosen = logprobs.gather(1, token_ids[rows].unsqueeze(1)).squeeze(1).tolist()
    most = max(requests[i].params.logprobs for i in rows)
    best_values, best_ids = (t.tolist() for t in logprobs.topk(most, dim=-1))
    for j, i in enumerate(rows):
        k = requests[i].params.logprobs
        sampled[i].logprob = chosen[j]
        sampled[i].top_logprobs = list(zip(best_ids[j][:k], best_values[j][:k]))
