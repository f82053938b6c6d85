"""Packing tokenized documents into micro-batches by a token budget (first-fit decreasing).

A `PackedBatch` lays its documents back to back without padding, the layout every vt_core kernel takes:
`input_ids[T]`, `position_ids[T]` (restarting at 0 per document) and `cu_seqlens[B+1]` come from
`vt_core.kernels.packing_metadata`; `targets[t]` is the next token of the same document where that next token
carries loss, else -100 (so every document's last token is -100), and `loss_mask = targets != -100`.
The loss at position t is the logprob of `targets[t]` given `hidden[t]`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vt_core.kernels import packing_metadata

from .chat import TokenizedExample

IGNORE_INDEX = -100
OVERFLOW_MODES = ("error", "truncate")

Doc = TokenizedExample | tuple[Sequence[int], Sequence[bool]]


@dataclass
class PackedBatch:
    """Documents packed into one row of T tokens.

    input_ids: int64 [T]; position_ids: int64 [T]; cu_seqlens: int32 [B+1]; max_seqlen: longest document;
    targets: int64 [T] (next token in the same document, -100 where no loss); loss_mask: bool [T];
    seq_lens: the B document lengths; example_ids: for each document, its index in the list that was packed
    (so the packed order maps back to the input order).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    targets: torch.Tensor
    loss_mask: torch.Tensor
    seq_lens: list[int]
    example_ids: list[int]

    @property
    def num_tokens(self) -> int:
        return self.input_ids.numel()

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens)

    def to(self, device, non_blocking: bool = False) -> PackedBatch:
        """A copy with every tensor on `device`."""
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)

    def split(self, values: torch.Tensor) -> list[torch.Tensor]:
        """Cut a per-token tensor [T, ...] into its B documents (packed order)."""
        return list(torch.split(values, self.seq_lens))


def _as_doc(doc: Doc) -> tuple[list[int], list[bool]]:
    if isinstance(doc, TokenizedExample):
        return list(doc.input_ids), list(doc.loss_mask)
    ids, mask = doc
    return list(ids), [bool(m) for m in mask]


def make_packed_batch(docs: Sequence[Doc], example_ids: Sequence[int] | None = None) -> PackedBatch:
    """Pack `docs` (TokenizedExample or (input_ids, token_loss_mask) pairs) in the given order into one batch.

    token_loss_mask[i] marks token i as one to predict: the target at position i-1 of its document.
    """
    if not docs:
        raise ValueError("make_packed_batch: docs is empty")
    ids_list, mask_list = [], []
    for k, doc in enumerate(docs):
        ids, mask = _as_doc(doc)
        if not ids:
            raise ValueError(f"make_packed_batch: document {k} is empty")
        if len(mask) != len(ids):
            raise ValueError(f"make_packed_batch: document {k} has {len(ids)} tokens but {len(mask)} mask entries")
        ids_list.append(torch.tensor(ids, dtype=torch.int64))
        mask_list.append(torch.tensor(mask, dtype=torch.bool))
    lengths = torch.tensor([len(x) for x in ids_list], dtype=torch.int64)
    cu_seqlens, position_ids, seq_ids = packing_metadata(lengths)
    input_ids = torch.cat(ids_list)
    token_mask = torch.cat(mask_list)
    targets = torch.full_like(input_ids, IGNORE_INDEX)
    keep = (seq_ids[1:] == seq_ids[:-1]) & token_mask[1:]
    targets[:-1] = torch.where(keep, input_ids[1:], targets[:-1])
    seq_lens = lengths.tolist()
    return PackedBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        cu_seqlens=cu_seqlens,
        max_seqlen=max(seq_lens),
        targets=targets,
        loss_mask=targets != IGNORE_INDEX,
        seq_lens=seq_lens,
        example_ids=list(range(len(docs))) if example_ids is None else list(example_ids),
    )


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of item indices, each summing to <= capacity, by first-fit decreasing.

    Items go longest first (ties by index) into the first bin with room, found in O(log n) with a max
    segment tree over the remaining room of every bin (unopened bins have full room, so the first fit is a
    new bin exactly when no open one fits). Bins are returned in opening order, items in each by index.
    """
    n = len(lengths)
    if capacity <= 0:
        raise ValueError(f"first_fit_decreasing: capacity must be > 0, got {capacity}")
    for i, length in enumerate(lengths):
        if not 0 < length <= capacity:
            raise ValueError(f"first_fit_decreasing: item {i} has length {length}, outside 1..{capacity}")
    size = 1
    while size < max(n, 1):
        size *= 2
    room = [capacity] * (2 * size)
    bins: list[list[int]] = []
    for i in sorted(range(n), key=lambda j: (-lengths[j], j)):
        node = 1
        while node < size:
            node = 2 * node if room[2 * node] >= lengths[i] else 2 * node + 1
        b = node - size
        if b == len(bins):
            bins.append([])
        bins[b].append(i)
        room[node] -= lengths[i]
        node //= 2
        while node:
            room[node] = max(room[2 * node], room[2 * node + 1])
            node //= 2
    return [sorted(b) for b in bins]


def _check_overflow(overflow: str) -> None:
    if overflow not in OVERFLOW_MODES:
        raise ValueError(f"overflow must be one of {OVERFLOW_MODES}, got {overflow!r}")


def pack_examples(examples: Sequence[Doc], max_tokens: int, *, overflow: str = "error") -> list[PackedBatch]:
    """Pack examples into micro-batches of at most `max_tokens` tokens each (first-fit decreasing).

    Every example lands in exactly one batch; `batch.example_ids` gives each document's index in `examples`.
    An example longer than max_tokens raises ValueError naming it (overflow="error", the default) or is cut
    to its first max_tokens tokens (overflow="truncate").
    """
    _check_overflow(overflow)
    if max_tokens <= 0:
        raise ValueError(f"pack_examples: max_tokens must be > 0, got {max_tokens}")
    docs = [_as_doc(e) for e in examples]
    for k, (ids, _) in enumerate(docs):
        if not ids:
            raise ValueError(f"pack_examples: example {k}{_where(examples[k])} is empty")
        if len(ids) > max_tokens:
            if overflow == "error":
                raise ValueError(
                    f"pack_examples: example {k}{_where(examples[k])} has {len(ids)} tokens, more than "
                    f"max_tokens={max_tokens}; raise max_tokens or pass overflow='truncate'"
                )
            docs[k] = (ids[:max_tokens], docs[k][1][:max_tokens])
    bins = first_fit_decreasing([len(ids) for ids, _ in docs], max_tokens)
    return [make_packed_batch([docs[i] for i in b], example_ids=b) for b in bins]


def _where(example: Doc) -> str:
    where = example.where if isinstance(example, TokenizedExample) else ""
    return f" ({where})" if where else ""


@dataclass
class RLMicroBatch:
    """(prompt, completion) pairs packed for an RL loss, with the map from completion tokens to positions in [T].

    batch: the PackedBatch (loss on completion tokens only); sample_ids: the pair index of each document
    (packed order, = batch.example_ids); prompt_lens / completion_lens: per document (completion_lens counts
    the tokens kept after truncation); token_index: int64 [C], the position t in [T] whose target is each kept
    completion token, completion by completion in packed order; completion_cu: int64 [B+1] offsets of each
    document's completion tokens in token_index. parents: None for pack_rl; from pack_rl_shared, each document's
    trunk document (-1: none), and then sample_ids / prompt_lens / completion_lens count the branch documents only.
    """

    batch: PackedBatch
    sample_ids: list[int]
    prompt_lens: list[int]
    completion_lens: list[int]
    token_index: torch.Tensor
    completion_cu: torch.Tensor
    parents: list[int] | None = None

    def to(self, device, non_blocking: bool = False) -> RLMicroBatch:
        return dataclasses.replace(
            self,
            batch=self.batch.to(device, non_blocking),
            token_index=self.token_index.to(device, non_blocking=non_blocking),
            completion_cu=self.completion_cu.to(device, non_blocking=non_blocking),
        )

    def scatter_tokens(self, values: Sequence[torch.Tensor], fill: float = 0.0) -> torch.Tensor:
        """Per-completion-token values onto [T]: values[i] is a 1-D tensor for pair i (global index, one entry
        per completion token, e.g. the sampler's logprobs); positions without a completion target get `fill`."""
        parts = [torch.as_tensor(values[s]).reshape(-1)[:n] for s, n in zip(self.sample_ids, self.completion_lens)]
        for s, n, p in zip(self.sample_ids, self.completion_lens, parts):
            if p.numel() != n:
                raise ValueError(f"scatter_tokens: values[{s}] has {p.numel()} entries, the completion has {n} tokens")
        flat = torch.cat(parts).to(self.token_index.device)
        out = torch.full((self.batch.num_tokens,), fill, dtype=flat.dtype, device=flat.device)
        out[self.token_index] = flat
        return out

    def scatter_samples(self, values: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Per-pair scalars values[N] (global index, e.g. advantages) broadcast onto each completion's positions."""
        values = torch.as_tensor(values).to(self.token_index.device)
        picked = values[torch.tensor(self.sample_ids, device=values.device)]
        counts = torch.tensor(self.completion_lens, device=values.device)
        flat = torch.repeat_interleave(picked, counts)
        out = torch.full((self.batch.num_tokens,), fill, dtype=values.dtype, device=values.device)
        out[self.token_index] = flat
        return out

    def gather_tokens(self, values: torch.Tensor) -> list[torch.Tensor]:
        """Per-position values [T] (e.g. trainer logprobs) back to one tensor per completion, in packed order."""
        return list(torch.split(values[self.token_index], self.completion_lens))


def _rl_micro_batch(pairs: list[tuple[list[int], list[int]]], sample_ids: list[int]) -> RLMicroBatch:
    docs = [(p + c, [False] * len(p) + [True] * len(c)) for p, c in pairs]
    batch = make_packed_batch(docs, example_ids=sample_ids)
    c_lens = [len(c) for _, c in pairs]
    completion_cu = torch.zeros(len(pairs) + 1, dtype=torch.int64)
    completion_cu[1:] = torch.cumsum(torch.tensor(c_lens, dtype=torch.int64), 0)
    return RLMicroBatch(
        batch=batch,
        sample_ids=list(sample_ids),
        prompt_lens=[len(p) for p, _ in pairs],
        completion_lens=c_lens,
        token_index=batch.loss_mask.nonzero().reshape(-1),
        completion_cu=completion_cu,
    )


def pack_rl(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], max_tokens: int | None = None,
            *, overflow: str = "error") -> list[RLMicroBatch]:
    """Pack tokenized (prompt, completion) pairs for an RL loss, loss on the completion tokens.

    max_tokens=None: one micro-batch with the pairs in order. Otherwise micro-batches of at most max_tokens
    tokens by first-fit decreasing; a longer pair raises ValueError (overflow="error") or has its completion
    cut to fit (overflow="truncate"; the prompt is kept whole and must leave room for one completion token).
    Prompts must be non-empty (the first completion token is predicted from the last prompt token).
    """
    _check_overflow(overflow)
    if len(prompts) != len(completions):
        raise ValueError(f"pack_rl: {len(prompts)} prompts but {len(completions)} completions")
    if not prompts:
        raise ValueError("pack_rl: no pairs to pack")
    pairs = []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        p, c = [int(t) for t in p], [int(t) for t in c]
        if not p:
            raise ValueError(f"pack_rl: prompt {i} is empty")
        if max_tokens is not None and len(p) + len(c) > max_tokens:
            if overflow == "error" or len(p) >= max_tokens:
                raise ValueError(
                    f"pack_rl: pair {i} has {len(p)} prompt + {len(c)} completion tokens, more than "
                    f"max_tokens={max_tokens}" + ("; raise max_tokens or pass overflow='truncate'"
                                                  if overflow == "error" else " even with no completion")
                )
            c = c[: max_tokens - len(p)]
        pairs.append((p, c))
    if max_tokens is None:
        return [_rl_micro_batch(pairs, list(range(len(pairs))))]
    bins = first_fit_decreasing([len(p) + len(c) for p, c in pairs], max_tokens)
    return [_rl_micro_batch([pairs[i] for i in b], b) for b in bins]
