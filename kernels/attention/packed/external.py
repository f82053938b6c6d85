"""Optional third-party backends for ``packed_attention``, chosen with ``VT_ATTN_BACKEND``.

``VT_ATTN_BACKEND=vt`` (default) uses vt_core's own kernels. ``flash_attn`` calls flash-attn's
``flash_attn_varlen_func`` and ``xformers`` calls ``xformers.ops.memory_efficient_attention`` with a
block-diagonal (causal) mask. Neither is required; asking for one that is not installed is an error that
says so (no silent fallback). Both are GPU libraries: they raise their own error on CPU tensors.
Semantics are vt_core's: documents from cu_seqlens, causal within a document, and ``window`` = w letting
query i see keys i - w < j <= i (causal) or |i - j| < w.
"""

from __future__ import annotations

import importlib
import os

import torch

ATTN_BACKENDS = ("vt", "flash_attn", "xformers")


def requested_attn_backend() -> str:
    """The backend named by ``VT_ATTN_BACKEND`` (``vt`` when unset)."""
    name = os.environ.get("VT_ATTN_BACKEND", "vt").strip().lower() or "vt"
    if name not in ATTN_BACKENDS:
        raise ValueError(f"VT_ATTN_BACKEND={name!r} is not one of {', '.join(ATTN_BACKENDS)}")
    return name


def _import(backend: str, module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise RuntimeError(f"VT_ATTN_BACKEND={backend} but {module!r} cannot be imported ({e}); "
                           "install it or unset VT_ATTN_BACKEND") from e


def flash_window(causal: bool, window: int | None) -> tuple[int, int]:
    """flash-attn's ``window_size=(left, right)`` (query i sees keys i-left..i+right; -1 is unbounded)."""
    if window is None:
        return (-1, -1)
    return (window - 1, 0) if causal else (window - 1, window - 1)


def external_packed_attention(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              cu_seqlens: torch.Tensor, max_seqlen: int, causal: bool,
                              softmax_scale: float | None, window: int | None) -> torch.Tensor:
    """Run packed attention through ``backend`` (flash_attn or xformers); shapes as ``packed_attention``."""
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    cu = cu_seqlens.to(torch.int32)
    if backend == "flash_attn":
        fa = _import(backend, "flash_attn")
        return fa.flash_attn_varlen_func(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=int(max_seqlen),
                                         max_seqlen_k=int(max_seqlen), softmax_scale=scale, causal=causal,
                                         window_size=flash_window(causal, window))
    if window is not None:
        raise ValueError("packed_attention: VT_ATTN_BACKEND=xformers does not take a sliding window here; "
                         "use VT_ATTN_BACKEND=vt or flash_attn")
    ops = _import(backend, "xformers.ops")
    lens = (cu[1:] - cu[:-1]).tolist()
    mask_cls = ops.fmha.attn_bias.BlockDiagonalCausalMask if causal else ops.fmha.attn_bias.BlockDiagonalMask
    rep = q.shape[1] // k.shape[1]
    out = ops.memory_efficient_attention(q[None], k.repeat_interleave(rep, dim=1)[None],
                                         v.repeat_interleave(rep, dim=1)[None],
                                         attn_bias=mask_cls.from_seqlens(lens), scale=scale)
    return out[0]
