"""Which samples run next: admission of queued requests into prefill batches, cache blocks for decode steps,
forking a prompt into its n samples, and preemption.

Waiting items (:class:`NewPrompt`, :class:`Resume`) are admitted in FIFO order while the cache has blocks for them,
the prefill token budget allows and the batch has room; a request's n samples share the prompt's full blocks
(each gets its own copy of a partly filled last block). Before a decode step every running sample that crosses
into a new block gets one; when none is free, pending draws are read first (finished samples give blocks back),
then the most recently admitted sample is preempted (its blocks freed); it resumes later by recomputing its K/V.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import torch

from vt_core.generation.cache import KVCache
from vt_core.generation.graphs import to_device
from vt_core.generation.params import Completion, SamplingParams
from vt_core.generation.sequence import NewPrompt, PrefillItem, Resume, Sequence, SeqState

_MASK64 = (1 << 64) - 1


def derive_seed(seed: int, index: int) -> int:
    """Seed of sample ``index`` of a request seeded with ``seed`` (splitmix64 of the pair), 63 bits."""
    z = (seed + (index + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


class Scheduler:
    """The queues of one ``generate`` call over ``cache``.

    prompts, params, n, results: the call's requests (``results[i][j]`` is sample j of prompt i, filled in
    place); eos_ids: stop ids added to each request's own; stats: the engine's counters (``preemptions``);
    on_preempt: called when a sample loses its blocks (runners that mirror the cache drop the mirror).
    """

    def __init__(self, cache: KVCache, prompts: list[list[int]], params: list[SamplingParams], n: int,
                 results: list[list[Completion]], eos_ids: frozenset, max_batch_size: int, max_prefill_tokens: int,
                 stats: dict, on_preempt: Callable[[], None]):
        self.cache = cache
        self.block_size = cache.block_size
        self.prompts, self.params, self.n, self.results = prompts, params, n, results
        self.eos_ids = eos_ids
        self.max_batch_size, self.max_prefill_tokens = max_batch_size, max_prefill_tokens
        self.stats = stats
        self.on_preempt = on_preempt
        self.waiting: deque[NewPrompt | Resume] = deque(NewPrompt(i) for i in range(len(prompts)))
        self.running: list[Sequence] = []
        self._order = 0

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _blocks_needed(self, length: int, copies: int) -> int:
        full, partial = divmod(length, self.block_size)
        return full + (copies if partial else 0)

    # -- prefill --------------------------------------------------------------------------------
    def admit(self) -> list[PrefillItem]:
        """Take the waiting items that fit now (FIFO) and give each the blocks of its prefill tokens."""
        chosen, budget, free = [], self.max_prefill_tokens, self.cache.allocator.num_free
        slots_left = self.max_batch_size - len(self.running)
        while self.waiting:
            item = self.waiting[0]
            if isinstance(item, NewPrompt):
                length, samples = len(self.prompts[item.index]), self.n
            else:
                length, samples = len(item.seq) - 1, 1
            blocks = self._blocks_needed(length, samples)
            if chosen and (length > budget or samples > slots_left):
                break
            if blocks > free or (samples > slots_left and self.running):
                break
            self.waiting.popleft()
            chosen.append(item)
            budget -= length
            free -= blocks
            slots_left -= samples
        batch = []
        for item in chosen:
            tokens = self.prompts[item.index] if isinstance(item, NewPrompt) else item.seq.tokens[:-1]
            blocks = [self.cache.allocator.allocate() for _ in range(math.ceil(len(tokens) / self.block_size))]
            batch.append(PrefillItem(item, tokens, blocks))
        return batch

    def start(self, batch: list[PrefillItem]) -> tuple[list[Sequence], list[int]]:
        """After the prefill wrote the batch's K/V: resumed samples run again, each new prompt forks into its n
        samples. Returns the new samples and, for each, its row in ``batch`` (whose last position it samples)."""
        alloc, bs = self.cache.allocator, self.block_size
        new: list[Sequence] = []
        rows: list[int] = []
        resumed: list[Sequence] = []
        for b, p in enumerate(batch):
            if isinstance(p.item, Resume):
                seq = p.item.seq
                seq.blocks = p.blocks
                self._order += 1
                seq.order = self._order
                seq.state = SeqState.RUNNING
                self.running.append(seq)
                resumed.append(seq)
                continue
            i, length = p.item.index, len(p.tokens)
            prm = self.params[i]
            base = prm.seed if prm.seed is not None else int(torch.randint(0, 2**62, ()).item())
            stop_ids = frozenset(prm.stop_token_ids) | (frozenset() if prm.ignore_eos else self.eos_ids)
            for j in range(self.n):
                seq = Sequence(i, j, self.prompts[i], prm, derive_seed(base, j), stop_ids, self.results[i][j])
                if j == 0:
                    seq.blocks = p.blocks
                else:
                    seq.blocks = list(p.blocks)
                    for blk in p.blocks[: length // bs]:
                        alloc.share(blk)
                    if length % bs:
                        copy = alloc.allocate()
                        self.cache.copy_block(p.blocks[-1], copy)
                        seq.blocks[-1] = copy
                self._order += 1
                seq.order = self._order
                new.append(seq)
                rows.append(b)
        if resumed:  # a resumed sample's last token (read back before it was preempted) is its next input
            last = to_device(torch.tensor([s.out.token_ids[-1] for s in resumed]), self.cache.k.device)
            for r, s in enumerate(resumed):
                s.src = (last, r)
        return new, rows

    # -- decode ---------------------------------------------------------------------------------
    def schedule_decode(self, read_pending: Callable[[], None]) -> list[Sequence]:
        """Give every running sample that starts a new block one (``read_pending`` reads back pending draws
        first when none is free, then samples are preempted); returns the samples of the decode step."""
        alloc, bs = self.cache.allocator, self.block_size
        for seq in sorted(self.running, key=lambda s: s.order):
            if seq.state != SeqState.RUNNING:
                continue  # finished or preempted while making room for an earlier one
            if (len(seq) - 1) // bs < len(seq.blocks):
                continue
            if alloc.num_free == 0:
                read_pending()  # finished samples free their blocks
            if seq.state != SeqState.RUNNING:
                continue
            while alloc.num_free == 0:
                victim = max(self.running, key=lambda s: s.order)
                self.preempt(victim)
                if victim is seq:
                    break
            if seq.state == SeqState.RUNNING:
                seq.blocks.append(alloc.allocate())
        return list(self.running)

    def advance(self, seqs: list[Sequence], tokens: torch.Tensor) -> None:
        """``seqs`` drew one token each (row r of ``tokens``): they run on, or stop drawing at their limit."""
        for r, s in enumerate(seqs):
            s.sampled += 1
            s.src = (tokens, r)
            if s.state != SeqState.RUNNING:
                s.state = SeqState.RUNNING
                self.running.append(s)
            if s.sampled >= s.params.max_new_tokens:
                s.state = SeqState.DRAWN
        self.prune()

    def prune(self) -> None:
        """Drop the samples that stopped running (finished, all drawn, or preempted) from the decode batch."""
        self.running[:] = [s for s in self.running if s.state == SeqState.RUNNING]

    def preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        seq.state = SeqState.WAITING
        self.on_preempt()
        self.release(seq)
        self.waiting.appendleft(Resume(seq))
        self.stats["preemptions"] += 1

    def release(self, seq: Sequence) -> None:
        """Give a sample's blocks back to the cache."""
        self.cache.allocator.release(seq.blocks)
        seq.blocks = []
