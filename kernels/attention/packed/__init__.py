"""Packed (varlen) attention: documents packed without padding, for training and prefill.

Files by role: ``fused.py`` (Triton kernels, ``packed_attention_fwd`` / ``packed_attention_bwd`` launchers, the
CUDA launch tables), ``function.py`` (the autograd Function, ``packed_attention_fused``), ``chunked.py`` (the
pure-torch path, ``packed_attention_torch``, alias ``packed_attention_reference``), ``naive.py`` (the readable
oracle, ``packed_attention_naive``), ``external.py`` (the flash-attn / xformers hand-off of ``VT_ATTN_BACKEND``).
"""

from __future__ import annotations

import torch

from ..._dispatch import resolve_backend
from .chunked import packed_attention_torch, packed_attention_reference
from .external import external_packed_attention, requested_attn_backend
from .function import packed_attention_fused
from .fused import MAX_HEAD_DIM
from .naive import packed_attention_naive


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

    Shapes: q [T, H, d], k and v [T, Hkv, d] (H a multiple of Hkv; any d up to 256 on the Triton path, whose
    tiles round d up to a power of two >= 16 and mask the rest), cu_seqlens int32 [B+1] with cu_seqlens[0] == 0
    and cu_seqlens[-1] == T, max_seqlen the longest document (an int, or a 0-d tensor). Returns o [T, H, d] in
    the dtype of q.
    Tokens attend only within their own document: causally when ``causal``; with ``window`` = w, query i
    sees keys j with i - w < j <= i (causal) or |i - j| < w (non-causal). ``softmax_scale`` defaults to
    1/sqrt(d). Differentiable in q, k and v. ``VT_ATTN_BACKEND=flash_attn|xformers`` hands the call to
    those libraries where installed (see ``external.py``).
    """
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"packed_attention: q, k, v must be [T, H, d]; got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2]:
        raise ValueError(f"packed_attention: k {tuple(k.shape)} and v {tuple(v.shape)} must match q {tuple(q.shape)} "
                         "in T and d")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"packed_attention: q heads {q.shape[1]} must be a multiple of kv heads {k.shape[1]}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError("packed_attention: cu_seqlens must be 1-D with B+1 >= 2 entries, got shape "
                         f"{tuple(cu_seqlens.shape)}")
    if cu_seqlens.device != q.device:
        raise ValueError(f"packed_attention: cu_seqlens is on {cu_seqlens.device} but q on {q.device}")
    if window is not None and window < 1:
        raise ValueError(f"packed_attention: window must be >= 1 or None, got {window}")
    external = requested_attn_backend()
    if external != "vt":
        return external_packed_attention(external, q, k, v, cu_seqlens, max_seqlen, causal, softmax_scale, window)
    backend = resolve_backend("packed_attention", q)
    if backend == "torch":
        return packed_attention_torch(q, k, v, cu_seqlens, causal=causal, softmax_scale=softmax_scale,
                                        window=window)
    if q.shape[2] > MAX_HEAD_DIM:
        raise ValueError(f"packed_attention: the Triton path needs head dim d <= {MAX_HEAD_DIM}, "
                         f"got q {tuple(q.shape)}")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError("packed_attention: q, k, v must share one of fp16/bf16/fp32, got "
                         f"{q.dtype}, {k.dtype}, {v.dtype}")
    return packed_attention_fused(q, k, v, cu_seqlens, max_seqlen, causal=causal, softmax_scale=softmax_scale,
                                  window=window)


__all__ = [
    "packed_attention",
    "packed_attention_torch",
    "packed_attention_reference",
    "packed_attention_naive",
    "packed_attention_fused",
]
