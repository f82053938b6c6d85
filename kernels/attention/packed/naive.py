"""Packed attention, the readable oracle: one document at a time, explicit scores, mask and softmax.

Written independently of the torch path (no SDPA, no padding, no batching) so that tests and benches can check
both fast paths against it; run it in float64 for a reference.
"""

from __future__ import annotations

import torch


def packed_attention_naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                           causal: bool = True, softmax_scale: float | None = None,
                           window: int | None = None) -> torch.Tensor:
    """Attention of every document of ``cu_seqlens`` over its own tokens.

    Shapes: q [T, H, d], k and v [T, Hkv, d] (H a multiple of Hkv), cu_seqlens [B+1] -> o [T, H, d] in q's dtype.
    Query i of a document sees key j when j <= i (``causal``) and |i - j| < ``window`` (when set);
    ``softmax_scale`` defaults to 1/sqrt(d).
    """
    out = torch.zeros_like(q)
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    rep = q.shape[1] // k.shape[1]
    for s, e in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        if e == s:
            continue
        i = torch.arange(e - s)[:, None]
        j = torch.arange(e - s)[None, :]
        allowed = torch.ones(e - s, e - s, dtype=torch.bool)
        if causal:
            allowed &= j <= i
        if window is not None:
            allowed &= (i - j).abs() < window
        kk = k[s:e].repeat_interleave(rep, 1)
        vv = v[s:e].repeat_interleave(rep, 1)
        scores = torch.einsum("ihd,jhd->hij", q[s:e], kk) * scale
        p = scores.masked_fill(~allowed.to(q.device), float("-inf")).softmax(-1)
        out[s:e] = torch.einsum("hij,jhd->ihd", p, vv)
    return out
