"""On CPU the LM head writes each step's logits into one buffer that every step reuses.

A fresh [rows, vocab] float32 tensor past glibc's mmap threshold (32 MiB: 171 rows of a 49k
vocabulary, 55 of a 152k one) is mapped for every step, faulted in page by page while the matrix
product writes it, and unmapped when freed: at 256 rows of 49,152 that took the LM head from 39 to
63 ms on the development VM. The logits a step returns are therefore valid until the next step.
"""

import torch


class ReusedLogitsHead(torch.nn.Module):
    """Wraps the model's output Linear. The engine's steps (inference mode, at most max_rows rows) write
    the buffer; anything else (prompt logprobs over a long prompt, generate() in tests) runs the Linear as it is."""

    def __init__(self, head: torch.nn.Linear, max_rows: int):
        super().__init__()
        self.head = head
        self.max_rows = max_rows
        self.buffer: torch.Tensor | None = None

    @property
    def weight(self) -> torch.nn.Parameter:
        return self.head.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.shape[:-1].numel()
        weight = self.head.weight
        if rows > self.max_rows or hidden.dtype != weight.dtype or not torch.is_inference_mode_enabled():
            return self.head(hidden)
        if self.buffer is None:
            self.buffer = torch.empty(self.max_rows, weight.shape[0], dtype=weight.dtype, device=weight.device)
        logits = torch.mm(hidden.reshape(rows, -1), weight.t(), out=self.buffer[:rows])
        if self.head.bias is not None:
            logits += self.head.bias
        return logits.view(*hidden.shape[:-1], weight.shape[0])


def reuse_logits_buffer(model: torch.nn.Module, max_rows: int) -> bool:
    """Puts the model's LM head behind a reused buffer when it is a plain Linear; whether it did."""
    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        return False
    model.set_output_embeddings(ReusedLogitsHead(head, max_rows))
    return True
