"""Prompt logprobs: the log-probability of each prompt token given the ones before it, from the prefill.

The logits row of position p predicts token p + 1, so prompt token i (i >= 1) takes its logprob
from the row of position i - 1 of whichever prefill chunk computed it; token 0 has none. Each
chunk keeps the rows of its positions whose token is not done yet, so chunked prefill adds them
up, and a preempted sequence's recompute adds nothing twice. Such a request never takes blocks
from the prefix cache (BlockManager.find_cached_prefix): a hit would skip computing those rows.
"""

import torch

from engine.sampler import SampledToken
from engine.scheduler import ScheduledSequence


def prompt_positions(s: ScheduledSequence) -> range:
    """The positions of this step's chunk whose logits give prompt logprobs not yet computed."""
    seq = s.seq
    if seq.params.prompt_logprobs is None:
        return range(0)
    # len(seq.prompt_logprobs) tokens are done (tokens 1..len); the next comes from position len.
    begin = max(seq.num_computed_tokens, len(seq.prompt_logprobs))
    end = min(seq.num_computed_tokens + s.num_new_tokens, seq.num_prompt_tokens - 1)
    return range(begin, end)


def prompt_rows(s: ScheduledSequence, last_row: int) -> list[int]:
    """The packed rows of prompt_positions(s), given the row of the chunk's last token (chunks are contiguous)."""
    end = s.seq.num_computed_tokens + s.num_new_tokens
    return [last_row - (end - 1 - p) for p in prompt_positions(s)]


def add_prompt_logprobs(s: ScheduledSequence, logits: torch.Tensor) -> None:
    """Append to s.seq.prompt_logprobs the entries of its rows' logits (one row per prompt_positions(s))."""
    seq = s.seq
    positions = prompt_positions(s)
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # the model's distribution, as the sampler's raw logprobs
    targets = torch.tensor([seq.token_ids[p + 1] for p in positions], device=logits.device)
    chosen = logprobs.gather(1, targets[:, None]).squeeze(1).tolist()
    k = seq.params.prompt_logprobs
    best_values, best_ids = (t.tolist() for t in logprobs.topk(k, dim=-1)) if k else ([[]] * len(chosen),) * 2
    for token, value, ids, values in zip(targets.tolist(), chosen, best_ids, best_values):
        seq.prompt_logprobs.append(SampledToken(token, value, list(zip(ids, values))))
