"""Paged decode attention, the readable oracle: each sequence's cached tokens gathered slot by slot in a Python
loop, then explicit scores and softmax in float64. Tests and benches check every backend against it."""

from __future__ import annotations

import torch


def paged_decode_attention_naive(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                 block_table: torch.Tensor, context_lens: torch.Tensor,
                                 softmax_scale: float | None = None) -> torch.Tensor:
    """q [B, H, d], caches [num_blocks, block_size, Hkv, d], block_table [B, max_blocks], context_lens [B]
    -> o [B, H, d] in float64 (zero for a sequence with no context). ``softmax_scale`` defaults to 1/sqrt(d)."""
    B, H, d = q.shape
    page, hkv = k_cache.shape[1], k_cache.shape[2]
    scale = softmax_scale if softmax_scale is not None else d**-0.5
    out = torch.zeros(B, H, d, dtype=torch.float64, device=q.device)
    for b in range(B):
        n = int(context_lens[b])
        if n == 0:
            continue
        slots = [int(block_table[b, t // page]) * page + t % page for t in range(n)]
        k = k_cache.reshape(-1, hkv, d)[slots].double().repeat_interleave(H // hkv, 1)  # [n, H, d]
        v = v_cache.reshape(-1, hkv, d)[slots].double().repeat_interleave(H // hkv, 1)
        p = (torch.einsum("hd,nhd->hn", q[b].double(), k) * scale).softmax(-1)
        out[b] = torch.einsum("hn,nhd->hd", p, v)
    return out
