"""Packed attention, pure torch: the CPU path and the benchmark baseline (``packed_attention_torch``).

Documents are the chunks: each goes through SDPA on its own, documents of similar length batched into one
padded call. ``packed_attention_reference`` is the same function under its former public name
(``vt_core.kernels.__all__``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Documents of similar length are batched into one padded SDPA call while the padded size stays within
# this factor of the real tokens (plus a small constant); one SDPA call per document otherwise.
_PAD_SLACK = 1.25
_PAD_EXTRA = 64


def _length_buckets(lengths: list[int]) -> list[list[int]]:
    """Group document indices (longest first) so each group pads to at most ~_PAD_SLACK x its tokens."""
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: -lengths[i])
    buckets: list[list[int]] = []
    cur: list[int] = []
    cur_sum = 0
    for i in order:
        if cur and (len(cur) + 1) * lengths[cur[0]] > _PAD_SLACK * (cur_sum + lengths[i]) + _PAD_EXTRA:
            buckets.append(cur)
            cur, cur_sum = [], 0
        cur.append(i)
        cur_sum += lengths[i]
    if cur:
        buckets.append(cur)
    return buckets


def packed_attention_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    causal: bool = True,
    softmax_scale: float | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """SDPA per document, documents of similar length batched into one padded call.

    q: [T, H, d], k/v: [T, Hkv, d] with H % Hkv == 0, cu_seqlens: [B+1] -> o: [T, H, d].
    ``window`` (if set) lets query i attend to keys j with i - window < j <= i (causal) or |i - j| < window.
    Padding only ever adds masked keys and discarded queries, so each document's result is its own.
    """
    T, H, d = q.shape
    rep = H // k.shape[1]
    bounds = cu_seqlens.tolist()
    starts, lengths = bounds[:-1], [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    pieces, rows = [], []
    for bucket in _length_buckets(lengths):
        L = lengths[bucket[0]]
        dev = q.device
        pos = torch.arange(L, device=dev)
        start = torch.tensor([starts[i] for i in bucket], device=dev)[:, None]
        size = torch.tensor([lengths[i] for i in bucket], device=dev)[:, None]
        valid = pos[None, :] < size  # [nb, L]
        idx = start + torch.minimum(pos[None, :], size - 1)  # padding repeats the last real token
        qb = q[idx].transpose(1, 2)  # [nb, H, L, d]
        kb = k[idx].transpose(1, 2).repeat_interleave(rep, dim=1)
        vb = v[idx].transpose(1, 2).repeat_interleave(rep, dim=1)
        if len(bucket) == 1 and window is None:
            o = F.scaled_dot_product_attention(qb, kb, vb, is_causal=causal, scale=softmax_scale)
        else:
            i, j = pos[:, None], pos[None, :]
            allowed = torch.ones(L, L, dtype=torch.bool, device=dev)
            if causal:
                allowed &= j <= i
            if window is not None:
                allowed &= (i - j < window) & (j - i < window)
            mask = allowed[None, None] & valid[:, None, None, :]
            o = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=softmax_scale)
        pieces.append(o.transpose(1, 2)[valid])  # [tokens, H, d]
        rows.append(idx[valid])
    if not pieces:
        return q.new_zeros(q.shape)
    return q.new_zeros(q.shape).index_copy(0, torch.cat(rows), torch.cat(pieces).to(q.dtype))


packed_attention_reference = packed_attention_torch
"""Former name of :func:`packed_attention_torch`, kept in ``vt_core.kernels.__all__``."""
