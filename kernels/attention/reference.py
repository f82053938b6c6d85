"""Pure-torch references for packed attention: the CPU path, the test oracle and the bench baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def packed_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    causal: bool = True,
    softmax_scale: float | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Per-document SDPA loop over a packed batch.

    q: [T, H, d], k/v: [T, Hkv, d] with H % Hkv == 0, cu_seqlens: [B+1] -> o: [T, H, d].
    ``window`` (if set) lets query i attend to keys j with i - window < j <= i (causal sliding window).
    """
    T, H, d = q.shape
    Hkv = k.shape[1]
    rep = H // Hkv
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end == start:
            continue
        qs = q[start:end].transpose(0, 1)  # [H, L, d]
        ks = k[start:end].transpose(0, 1).repeat_interleave(rep, dim=0)
        vs = v[start:end].transpose(0, 1).repeat_interleave(rep, dim=0)
        L = end - start
        mask = None
        if window is not None or not causal:
            i = torch.arange(L, device=q.device)[:, None]
            j = torch.arange(L, device=q.device)[None, :]
            allowed = torch.ones(L, L, dtype=torch.bool, device=q.device)
            if causal:
                allowed &= j <= i
            if window is not None:
                allowed &= (i - j < window) & (j - i < window)
            mask = allowed
        o = F.scaled_dot_product_attention(
            qs, ks, vs, attn_mask=mask, is_causal=causal and mask is None, scale=softmax_scale
        )
        out[start:end] = o.transpose(0, 1)
    return out
