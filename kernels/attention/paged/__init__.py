"""Paged decode attention on a KV cache of fixed-size blocks, and the write of new K/V into that cache.

Cache layout (one layer): k_cache, v_cache [num_blocks, block_size, Hkv, d]. Token t of sequence b lives
in physical block ``block_table[b, t // block_size]`` at offset ``t % block_size``; its flat slot index is
``block * block_size + offset``. Sequence b has ``context_lens[b]`` tokens in the cache (the new token's
K/V included: write it with ``write_kv_cache`` first), and one query token q[b] that attends to all of them.

Backends (``VT_BACKEND``): ``torch`` the gather + SDPA of ``chunked.py``; ``triton`` the split-KV kernels of
``fused.py``; ``cpp`` the C++ CPU kernel ``paged_decode_native`` of ``native.py`` (fp32 CPU tensors; also
registered as the custom op ``vt_core::paged_decode_native``, and the generation engine's
``decode_attention="native"``). ``naive.py`` holds the readable oracle, ``paged_decode_attention_naive``.
"""

from __future__ import annotations

import math

import torch

from ..._dispatch import resolve_backend
from ..packed.fused import MAX_HEAD_DIM
from .chunked import (
    paged_decode_attention_torch,
    paged_decode_attention_reference,
    write_kv_cache_torch,
    write_kv_cache_reference,
)
from .fused import paged_decode_fwd, write_kv_cache_fwd
from .naive import paged_decode_attention_naive
from .native import paged_decode_native

AVAILABLE = ("torch", "triton", "cpp")


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    context_lens: torch.Tensor,
    softmax_scale: float | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:
    """One decode step of attention against a paged KV cache (no gradient).

    Shapes: q [B, H, d] (the new token of each sequence), k_cache and v_cache [num_blocks, block_size, Hkv, d]
    (H a multiple of Hkv; any d up to 256 on the Triton path), block_table int32 [B, max_blocks] (physical
    block of each logical block; entries past a sequence's last block are ignored but must be valid indices for
    the torch path), context_lens int32 [B] (tokens in the cache per sequence, the new one included).
    Returns o [B, H, d] in q's dtype.
    ``softmax_scale`` defaults to 1/sqrt(d); ``num_splits`` overrides the Triton path's context split count.
    """
    if q.dim() != 3:
        raise ValueError(f"paged_decode_attention: q must be [B, H, d], got {tuple(q.shape)}")
    if k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(f"paged_decode_attention: k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} "
                         "must both be [num_blocks, block_size, Hkv, d]")
    B, H, D = q.shape
    if k_cache.shape[3] != D or H % k_cache.shape[2] != 0:
        raise ValueError(f"paged_decode_attention: cache {tuple(k_cache.shape)} does not fit q {tuple(q.shape)} "
                         "(same d, H a multiple of Hkv)")
    if block_table.dim() != 2 or block_table.shape[0] != B:
        raise ValueError(f"paged_decode_attention: block_table must be [B={B}, max_blocks], "
                         f"got {tuple(block_table.shape)}")
    if context_lens.shape != (B,):
        raise ValueError(f"paged_decode_attention: context_lens must be [B={B}], got {tuple(context_lens.shape)}")
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)
    with torch.no_grad():
        backend = resolve_backend("paged_decode_attention", q, AVAILABLE)
        if backend == "torch":
            return paged_decode_attention_torch(q, k_cache, v_cache, block_table, context_lens, scale)
        if backend == "cpp":
            if q.dtype != torch.float32 or k_cache.dtype != torch.float32 or v_cache.dtype != torch.float32:
                raise ValueError("paged_decode_attention: the C++ CPU kernel takes fp32 q and caches, got "
                                 f"{q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
            if not k_cache.is_contiguous() or not v_cache.is_contiguous():
                raise ValueError("paged_decode_attention: k_cache and v_cache must be contiguous")
            return paged_decode_native(q, k_cache, v_cache, block_table, context_lens, scale)
        if D > MAX_HEAD_DIM:
            raise ValueError(f"paged_decode_attention: the Triton path needs d <= {MAX_HEAD_DIM}, got {D}")
        if not k_cache.is_contiguous() or not v_cache.is_contiguous():
            raise ValueError("paged_decode_attention: k_cache and v_cache must be contiguous")
        return paged_decode_fwd(q.contiguous(), k_cache, v_cache, block_table.to(torch.int32),
                                context_lens.to(torch.int32).contiguous(), scale, num_splits)


def write_kv_cache(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write new keys/values into the paged cache, in place.

    Shapes: k, v [N, Hkv, d]; k_cache, v_cache [num_blocks, block_size, Hkv, d] (contiguous); slot_mapping
    int32/int64 [N] with slot = block * block_size + offset, or -1 to skip a token (padding). Values are cast
    to the cache dtype. Slots must be distinct.
    """
    if k.dim() != 3 or v.shape != k.shape:
        raise ValueError(f"write_kv_cache: k {tuple(k.shape)} and v {tuple(v.shape)} must both be [N, Hkv, d]")
    if k_cache.dim() != 4 or v_cache.shape != k_cache.shape or k_cache.shape[2:] != k.shape[1:]:
        raise ValueError(f"write_kv_cache: caches {tuple(k_cache.shape)}, {tuple(v_cache.shape)} must be "
                         f"[num_blocks, block_size, Hkv, d] matching k {tuple(k.shape)}")
    if slot_mapping.shape != (k.shape[0],):
        raise ValueError(f"write_kv_cache: slot_mapping must be [N={k.shape[0]}], got {tuple(slot_mapping.shape)}")
    if not k_cache.is_contiguous() or not v_cache.is_contiguous():
        raise ValueError("write_kv_cache: k_cache and v_cache must be contiguous")
    with torch.no_grad():
        if resolve_backend("write_kv_cache", k) == "torch":
            write_kv_cache_torch(k, v, k_cache, v_cache, slot_mapping)
            return
        write_kv_cache_fwd(k, v, k_cache, v_cache, slot_mapping)


__all__ = [
    "paged_decode_attention",
    "paged_decode_attention_torch",
    "paged_decode_attention_reference",
    "paged_decode_attention_naive",
    "paged_decode_native",
    "write_kv_cache",
    "write_kv_cache_torch",
    "write_kv_cache_reference",
]
