"""Packed-sequence (varlen) attention. Public entry: ``packed_attention``."""

from __future__ import annotations

import torch

from .reference import packed_attention_reference


def packed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    causal: bool = True,
    softmax_scale: float | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Attention over documents packed without padding.

    Shapes: q [T, H, d], k and v [T, Hkv, d] (H a multiple of Hkv), cu_seqlens int32 [B+1] with
    cu_seqlens[0] == 0 and cu_seqlens[-1] == T, max_seqlen the longest document. Returns o [T, H, d].
    Tokens attend only within their own document (causally when ``causal``; within ``window`` keys when set).
    """
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"packed_attention: q, k, v must be [T, H, d]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2]:
        raise ValueError(f"packed_attention: k {tuple(k.shape)} and v {tuple(v.shape)} must match q {tuple(q.shape)} in T and d")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"packed_attention: q heads {q.shape[1]} must be a multiple of kv heads {k.shape[1]}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"packed_attention: cu_seqlens must be 1-D with B+1 >= 2 entries, got shape {tuple(cu_seqlens.shape)}")
    return packed_attention_reference(q, k, v, cu_seqlens, causal=causal, softmax_scale=softmax_scale, window=window)


__all__ = ["packed_attention", "packed_attention_reference"]
