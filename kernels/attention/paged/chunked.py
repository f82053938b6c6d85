"""Paged decode attention, pure torch: the CPU path of ``VT_BACKEND=torch`` and the benchmark baseline.

``paged_decode_attention_torch`` gathers each sequence's cache through its block table and runs one masked
SDPA over the batch; ``write_kv_cache_torch`` writes with two index copies. ``*_reference`` are the same
functions under their former public names (``vt_core.kernels.__all__``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def paged_decode_attention_torch(q, k_cache, v_cache, block_table, context_lens, softmax_scale=None):
    """Torch path: gather each sequence's cache through the block table, then masked SDPA (batched).

    Sequences with context length 0 get a zero output.
    """
    B, H, D = q.shape
    _, page, HKV, _ = k_cache.shape
    n_max = block_table.shape[1] * page
    k = k_cache[block_table.long()].reshape(B, n_max, HKV, D).transpose(1, 2)
    v = v_cache[block_table.long()].reshape(B, n_max, HKV, D).transpose(1, 2)
    valid = torch.arange(n_max, device=q.device)[None, :] < context_lens.to(q.device).long()[:, None]
    qg = q.reshape(B, HKV, H // HKV, D)
    o = F.scaled_dot_product_attention(qg, k.to(q.dtype), v.to(q.dtype), attn_mask=valid[:, None, None, :],
                                       scale=softmax_scale)
    o = torch.where(valid.any(1)[:, None, None, None], o, torch.zeros((), dtype=o.dtype, device=o.device))
    return o.reshape(B, H, D)


def write_kv_cache_torch(k, v, k_cache, v_cache, slot_mapping):
    """Torch path of ``write_kv_cache`` (in place; slots < 0 are skipped)."""
    HKV, D = k_cache.shape[2], k_cache.shape[3]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    k_cache.view(-1, HKV, D).index_copy_(0, slots, k[keep].to(k_cache.dtype))
    v_cache.view(-1, HKV, D).index_copy_(0, slots, v[keep].to(v_cache.dtype))


paged_decode_attention_reference = paged_decode_attention_torch
"""Former name of :func:`paged_decode_attention_torch`, kept in ``vt_core.kernels.__all__``."""
write_kv_cache_reference = write_kv_cache_torch
"""Former name of :func:`write_kv_cache_torch`, kept in ``vt_core.kernels.__all__``."""
