"""A sample in flight (``Sequence``, its ``SeqState``) and the scheduler's queue items."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from vt_core.generation.graphs import to_device
from vt_core.generation.params import Completion, SamplingParams


class SeqState(enum.Enum):
    """Where a sample is: queued, decoding, all its tokens drawn (some maybe not read back), finished."""

    WAITING = "waiting"
    RUNNING = "running"
    DRAWN = "drawn"
    DONE = "done"


class Sequence:
    """One sample in flight.

    Host-side lengths run ahead of the host-side tokens: ``sampled`` counts the tokens drawn, some of which
    may still be on the device (``EngineConfig.readback_lag``); ``out.token_ids`` holds the ones read back.
    ``src`` is (device tensor, row) of the last drawn token, the next decode step's input.
    """

    def __init__(self, req: int, index: int, prompt: list[int], params: SamplingParams, seed: int,
                 stop_ids: frozenset, out: Completion):
        self.req = req
        self.index = index  # which of the request's n samples
        self.prompt = prompt
        self.params = params
        self.seed = seed
        self.stop_ids = stop_ids
        self.out = out
        self.blocks: list[int] = []
        self.uniforms: list[float] = []  # Philox uniforms of offsets uniforms_from.. (plain sampling rows)
        self.uniforms_from = 0
        self.order = 0  # admission order, for picking what to preempt
        self.sampled = 0
        self.src: tuple[torch.Tensor, int] | None = None
        self.state = SeqState.WAITING

    def __len__(self) -> int:
        return len(self.prompt) + self.sampled

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.out.token_ids


@dataclass(frozen=True)
class NewPrompt:
    """A request waiting for its first prefill: prompt ``index`` of the ``generate`` call."""

    index: int


@dataclass(frozen=True)
class Resume:
    """A preempted sample waiting to recompute its K/V (its prompt and every token read back but the last)."""

    seq: Sequence


@dataclass
class PrefillItem:
    """One admitted queue item: the tokens to prefill and the cache blocks they go to."""

    item: NewPrompt | Resume
    tokens: list[int]
    blocks: list[int]


def last_tokens(seqs: list[Sequence], device: torch.device) -> torch.Tensor:
    """Device tensor of each sample's last drawn token (no host sync: gathered on the device)."""
    first = seqs[0].src[0]
    if first.numel() == len(seqs) and all(s.src[0] is first and s.src[1] == r for r, s in enumerate(seqs)):
        return first
    parts, base, index = {}, 0, []
    for s in seqs:
        t, r = s.src
        if id(t) not in parts:
            parts[id(t)] = (t, base)
            base += t.numel()
        index.append(parts[id(t)][1] + r)
    joined = torch.cat([t for t, _ in parts.values()])
    return joined[to_device(torch.tensor(index), device)]
