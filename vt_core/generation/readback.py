"""Drawn tokens on their way to the host, and the stop checks made when they arrive.

No host sync per token: draws come back through pinned memory and are read ``readback_lag`` launches later
(1 on CUDA: the host queues step t+1 before it waits for step t), which is when stop ids and stop strings are
checked. A sample found stopped is finished then (``on_done``); a token it drew meanwhile is dropped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import torch

from vt_core.generation.sequence import Sequence, SeqState


class Draw:
    """Tokens and logprobs drawn for ``seqs`` in one launch, on their way to the host."""

    def __init__(self, seqs: list[Sequence], tokens: torch.Tensor, raw: torch.Tensor, proc: torch.Tensor):
        self.seqs = seqs
        if tokens.is_cuda:
            packed = torch.stack([tokens.double(), raw.double(), proc.double()])
            self.host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
            self.host.copy_(packed, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host, self.event = (tokens, raw, proc), None

    def read(self) -> tuple[list[int], list[float], list[float]]:
        if self.event is None:
            tokens, raw, proc = self.host
            return tokens.tolist(), raw.tolist(), proc.tolist()
        self.event.synchronize()
        tokens, raw, proc = self.host.tolist()
        return [int(t) for t in tokens], raw, proc


class Readback:
    """The launches not read yet, oldest first. tokenizer: for stop strings; on_done(seq): a sample finished
    (its ``out.finish_reason`` is set and its state is ``DONE``)."""

    def __init__(self, tokenizer, on_done: Callable[[Sequence], None]):
        self.tokenizer = tokenizer
        self.on_done = on_done
        self.pending: deque[Draw] = deque()

    def push(self, seqs: list[Sequence], tokens: torch.Tensor, raw: torch.Tensor, proc: torch.Tensor) -> None:
        self.pending.append(Draw(seqs, tokens, raw, proc))

    def drain(self, keep: int) -> bool:
        """Read launches until at most ``keep`` are unread; returns whether a sample finished."""
        finished = False
        while len(self.pending) > keep:
            draw = self.pending.popleft()
            for s, t, lr, lp in zip(draw.seqs, *draw.read()):
                if s.state == SeqState.DONE:
                    continue  # drawn after it stopped (read-back lag): dropped
                s.out.token_ids.append(t)
                s.out.logprobs.append(lr)
                s.out.processed_logprobs.append(lp)
                reason = self.finish_reason(s, t)
                if reason is not None:
                    s.state = SeqState.DONE
                    s.out.finish_reason = reason
                    self.on_done(s)
                    finished = True
        return finished

    def finish_reason(self, seq: Sequence, token: int) -> str | None:
        if token in seq.stop_ids:
            return "stop"
        stops = seq.params.stop
        if stops:
            tail = 2 * max(len(x) for x in stops) + 8
            text = self.tokenizer.decode(seq.out.token_ids[-tail:], skip_special_tokens=False)
            if any(x in text for x in stops):
                return "stop"
        if len(seq.out.token_ids) >= seq.params.max_new_tokens:
            return "length"
        return None
