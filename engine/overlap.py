"""Async scheduling: the next step is scheduled and launched before this step's tokens are read.

On CUDA the model runs on the device while the host goes on: a step's sampled token ids stay there
and feed the next step's input ids, so the host schedules and prepares step N+1 and launches it
before it waits for step N's tokens, then detokenizes and checks them while N+1 runs (vLLM's async
scheduling). Until they are read, a sequence carries a placeholder for its newest token, which
names the row of the previous step's ids that holds it. A request that turns out to have finished
(EOS, a stop string, max_tokens) has had one token too many computed; that row is dropped.

Only requests whose tokens need nothing but a draw from the logits go this way; a grammar, logprobs,
penalties, logit_bias, prompt logprobs or min_tokens need each token on the host before the next
step's sampling, and while any such request is in the engine, steps run one after the other.
"""

import torch

from engine.sampling_params import SamplingParams
from engine.sequence import Sequence


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on the device without waiting for the device: a plain copy from pageable memory
    synchronizes the stream, i.e. waits for the step still running; through pinned memory it does not."""
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def overlappable(params: SamplingParams) -> bool:
    return (
        params.structured_output is None
        and params.logprobs is None
        and params.prompt_logprobs is None
        and not params.has_penalties
        and not params.logit_bias
        and params.min_tokens == 0
    )


def placeholder(row: int) -> int:
    """The token id standing for row `row` of the previous step's sampled ids (never a real id)."""
    return -1 - row


def fill_placeholders(input_ids: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """input_ids with each placeholder replaced by the token it names, on the device, without a sync."""
    pending = input_ids < 0
    return torch.where(pending, previous[(-1 - input_ids).clamp_(min=0)], input_ids)


class InFlightStep:
    """A launched step whose sampled token ids are still on the device (or, on CPU, just made)."""

    def __init__(self, seqs: list[Sequence], token_ids: torch.Tensor):
        self.seqs = seqs
        self.token_ids = token_ids  # where the next step's input ids are read from
        self._ready = None
        if token_ids.is_cuda:  # copied to pinned host memory behind the step, in stream order
            self._host = token_ids.to("cpu", non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record()
        else:
            self._host = token_ids

    def host_token_ids(self) -> list[int]:
        """The sampled ids on the host; waits for this step only, not for any launched after it."""
        if self._ready is not None:
            self._ready.synchronize()
        return self._host.tolist()
