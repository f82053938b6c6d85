"""RL micro-batches that hold each prompt once for all of its completions (prompt sharing).

The n completions of a GRPO group share one prompt p[0..L-1]. ``pack_rl`` lays out n documents p + c_j, so the
training forward runs the prompt n times; for short answers to long prompts (the embedded code task: 72 prompt
tokens, about 8 answer tokens) that is most of the compute. ``pack_rl_shared`` lays a group out as one *trunk*
document p[0..L-2] and n *branch* documents [p[L-1]] + c_j whose positions continue the trunk's (L-1, L, ...).
``shared_prompt_attention`` is the attention hook for that layout: a trunk token sees the trunk causally, a
branch token sees the whole trunk and its own branch causally, never another branch. The last prompt token is
repeated in every branch because it is the one that predicts c_j[0]: one position, one target.

The forward computes, for every branch token, the same function of the weights as the unshared layout does
(the trunk's hidden states are what every copy would compute), so losses and metrics equal ``pack_rl``'s up
to float summation order, and the gradient is the sum over the n copies that the unshared backward computes.
Cost: a group costs (L - 1) + sum_j (1 + |c_j|) tokens instead of sum_j (L + |c_j|), and attention is a dense
masked SDPA per group (memory (tokens of the group)^2 per head), which is meant for short completions; use
``pack_rl`` (``--algo.share_prompts false``) for long ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .packing import RLMicroBatch, _check_overflow, first_fit_decreasing, make_packed_batch


def _groups(prompts: Sequence[Sequence[int]]) -> list[tuple[list[int], list[int]]]:
    """(prompt, pair indices) per distinct prompt, in order of first appearance."""
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(prompts):
        by_prompt.setdefault(tuple(int(t) for t in p), []).append(i)
    return [(list(p), idx) for p, idx in by_prompt.items()]


def pack_rl_shared(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                   max_tokens: int | None = None, *, overflow: str = "error",
                   max_group_tokens: int | None = None) -> list[RLMicroBatch]:
    """Pack (prompt, completion) pairs like :func:`vt_core.data.pack_rl`, each distinct prompt once per
    micro-batch (pairs with equal prompt token ids share it, wherever they are in the list).

    max_tokens: token budget of a micro-batch (None: one micro-batch). A group that does not fit is split into
    sub-groups, each with its own trunk, and so is one longer than ``max_group_tokens`` (the width of its
    dense attention mask; a single pair longer than that still forms one sub-group of its own, so callers
    with long completions should use pack_rl). A single pair longer than the budget raises ValueError
    (overflow="error") or has its completion cut (overflow="truncate"), as in pack_rl. The micro-batches'
    ``parents`` give each document's trunk document (-1: none); ``sample_ids`` / ``completion_lens`` /
    ``token_index`` cover the branches, i.e. the pairs, in packed order.
    """
    _check_overflow(overflow)
    if len(prompts) != len(completions):
        raise ValueError(f"pack_rl_shared: {len(prompts)} prompts but {len(completions)} completions")
    if not prompts:
        raise ValueError("pack_rl_shared: no pairs to pack")
    units = []  # (trunk tokens, [(pair index, branch tokens, completion length)])
    for prompt, idx in _groups(prompts):
        if not prompt:
            raise ValueError(f"pack_rl_shared: prompt {idx[0]} is empty")
        trunk, last = prompt[:-1], prompt[-1]
        branches = []
        for i in idx:
            c = [int(t) for t in completions[i]]
            if max_tokens is not None and len(prompt) + len(c) > max_tokens:
                if overflow == "error" or len(prompt) >= max_tokens:
                    raise ValueError(
                        f"pack_rl_shared: pair {i} has {len(prompt)} prompt + {len(c)} completion tokens, more "
                        f"than max_tokens={max_tokens}" + ("; raise max_tokens or pass overflow='truncate'"
                                                           if overflow == "error" else " even with no completion"))
                c = c[: max_tokens - len(prompt)]
            branches.append((i, [last, *c], len(c)))
        current: list = []
        caps = [c for c in (max_tokens, max_group_tokens) if c is not None]
        for br in branches:  # sub-groups that fit the budget, each with its own trunk
            size = len(trunk) + sum(len(b[1]) for b in current) + len(br[1])
            if current and caps and size > min(caps):
                units.append((trunk, current))
                current = []
            current.append(br)
        units.append((trunk, current))
    sizes = [len(t) + sum(len(b[1]) for b in brs) for t, brs in units]
    bins = [list(range(len(units)))] if max_tokens is None else first_fit_decreasing(sizes, max_tokens)
    return [_shared_micro_batch([units[u] for u in b]) for b in bins]


def _shared_micro_batch(units: list) -> RLMicroBatch:
    docs, parents, doc_ids, offsets = [], [], [], []
    sample_ids, prompt_lens, c_lens = [], [], []
    for trunk, branches in units:
        root = -1
        if trunk:
            root = len(docs)
            docs.append((trunk, [False] * len(trunk)))
            parents.append(-1)
            doc_ids.append(-1)
            offsets.append(0)
        for i, tokens, n in branches:
            docs.append((tokens, [False] + [True] * n))
            parents.append(root)
            doc_ids.append(i)
            offsets.append(len(trunk))
            sample_ids.append(i)
            prompt_lens.append(len(trunk) + 1)
            c_lens.append(n)
    batch = make_packed_batch(docs, example_ids=doc_ids)
    lengths = torch.tensor(batch.seq_lens, dtype=torch.int64)
    batch.position_ids += torch.repeat_interleave(torch.tensor(offsets, dtype=torch.int64), lengths)
    batch.max_seqlen = max(len(t) + sum(len(b[1]) for b in brs) for t, brs in units)
    completion_cu = torch.zeros(len(c_lens) + 1, dtype=torch.int64)
    completion_cu[1:] = torch.cumsum(torch.tensor(c_lens, dtype=torch.int64), 0)
    return RLMicroBatch(batch=batch, sample_ids=sample_ids, prompt_lens=prompt_lens, completion_lens=c_lens,
                        token_index=batch.loss_mask.nonzero().reshape(-1), completion_cu=completion_cu,
                        parents=parents)


def shared_prompt_attention(model, mb: RLMicroBatch):
    """The attention hook (``model(..., attention=hook)``) of a :func:`pack_rl_shared` micro-batch: one dense
    masked SDPA over all groups, padded to the longest group. Differentiable; honours sliding windows."""
    if mb.parents is None:
        raise ValueError("shared_prompt_attention needs a micro-batch from pack_rl_shared (parents is None)")
    b = mb.batch
    dev = b.input_ids.device
    bounds = b.cu_seqlens.tolist()
    rows: dict[int, list[int]] = {}
    for d, p in enumerate(mb.parents):
        rows.setdefault(d if p < 0 else p, []).append(d)
    T = b.num_tokens
    slots = [[t for d in docs for t in range(bounds[d], bounds[d + 1])] for docs in rows.values()]
    width = max(len(s) for s in slots)
    index = torch.full((len(slots), width), T, dtype=torch.int64)
    for r, s in enumerate(slots):
        index[r, : len(s)] = torch.tensor(s, dtype=torch.int64)
    index = index.to(dev)
    valid = index < T
    doc_of = torch.repeat_interleave(torch.arange(len(bounds) - 1, device=dev),
                                     torch.tensor(b.seq_lens, device=dev), output_size=T)
    doc = torch.cat([doc_of, doc_of.new_full((1,), -1)])[index]          # [R, W], -1 on padding
    root = doc[:, :1]                                                    # the row's first document
    order = torch.arange(width, device=dev)
    allowed = (order[None, None, :] <= order[None, :, None]) & valid[:, None, :] & (
        (doc[:, None, :] == doc[:, :, None]) | (doc[:, None, :] == root[:, :, None]))
    pos = torch.cat([b.position_ids, b.position_ids.new_zeros(1)])[index]
    gap = pos[:, :, None] - pos[:, None, :]
    allowed |= torch.eye(width, dtype=torch.bool, device=dev)[None]      # padding rows see themselves only
    inverse = torch.argsort(index[valid])  # every token sits in exactly one row
    layers = model.model.layers

    def attention(i, q, k, v):
        attn = layers[i].self_attn
        mask = allowed if attn.window is None else allowed & ((gap < attn.window) | ~valid[:, :, None])

        def rows_of(x):
            return torch.cat([x, x.new_zeros(1, *x.shape[1:])])[index].transpose(1, 2)  # [R, heads, W, d]

        o = F.scaled_dot_product_attention(rows_of(q), rows_of(k), rows_of(v), attn_mask=mask[:, None],
                                           scale=attn.scale, enable_gqa=q.shape[1] != k.shape[1])
        o = o.transpose(1, 2)[valid]                                     # [T, H, d] in slot order
        return o[inverse]

    return attention
