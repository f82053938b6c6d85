"""The pure-torch path of the fused distillation divergence (the CPU path): the same maths as the Triton kernels,
chunk by chunk over tokens (never [T, V]); per chunk both logits blocks are built in fp32 and reduced whole.
"""

from __future__ import annotations

import math

import torch

# fp32 elements per [chunk, V] temporary (the chunk holds ~8 of them).
CHUNK_ELEMENTS = 1 << 24


def _chunk_tokens(V: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(1, V))


def _log_mixture_torch(lp: torch.Tensor, lq: torch.Tensor, beta: float) -> torch.Tensor:
    return torch.logaddexp(lp + math.log(beta), lq + math.log1p(-beta))


def kl_distill_torch_fwd(hs, ws, ht, wt, inv_temp: float, kind: int, beta: float):
    """The torch forward, chunk by chunk; same outputs as ``fused.kl_distill_fwd``."""
    T = hs.shape[0]
    out = torch.empty(4, T, device=hs.device, dtype=torch.float32)
    chunk = _chunk_tokens(ws.shape[0])
    for c0 in range(0, T, chunk):
        c1 = min(T, c0 + chunk)
        s = (hs[c0:c1] @ ws.t()).float() * inv_temp
        t = (ht[c0:c1] @ wt.t()).float() * inv_temp
        lse_s, lse_t = torch.logsumexp(s, -1), torch.logsumexp(t, -1)
        lq, lp = s - lse_s[:, None], t - lse_t[:, None]
        if kind == 0:
            loss = (lp.exp() * (lp - lq)).sum(-1)
            aux = loss
        elif kind == 1:
            loss = (lq.exp() * (lq - lp)).sum(-1)
            aux = loss
        else:
            lm = _log_mixture_torch(lp, lq, beta)
            aux = (lq.exp() * (lq - lm)).sum(-1)
            loss = beta * (lp.exp() * (lp - lm)).sum(-1) + (1.0 - beta) * aux
        out[0, c0:c1], out[1, c0:c1], out[2, c0:c1], out[3, c0:c1] = loss, lse_s, lse_t, aux
    return out[0], out[1], out[2], out[3]


def kl_distill_torch_bwd(hs, ws, ht, wt, lse_s, lse_t, aux, scale, inv_temp: float, kind: int, beta: float,
               need_dh: bool, need_dw: bool):
    """The torch backward, chunk by chunk; same outputs as ``fused.kl_distill_bwd``."""
    T = hs.shape[0]
    dh = torch.empty_like(hs) if need_dh else None
    dw = torch.zeros(ws.shape, device=ws.device, dtype=torch.float32) if need_dw else None
    chunk = _chunk_tokens(ws.shape[0])
    for c0 in range(0, T, chunk):
        c1 = min(T, c0 + chunk)
        lq = (hs[c0:c1] @ ws.t()).float() * inv_temp - lse_s[c0:c1, None]
        lp = (ht[c0:c1] @ wt.t()).float() * inv_temp - lse_t[c0:c1, None]
        q = lq.exp()
        if kind == 0:
            g = q - lp.exp()
        elif kind == 1:
            g = q * (lq - lp - aux[c0:c1, None])
        else:
            g = (1.0 - beta) * q * (lq - _log_mixture_torch(lp, lq, beta) - aux[c0:c1, None])
        g = (g * scale[c0:c1, None]).to(hs.dtype)
        if need_dh:
            torch.matmul(g, ws, out=dh[c0:c1])
        if need_dw:
            dw.add_(g.t() @ hs[c0:c1])
    if dw is not None:
        dw = dw.to(ws.dtype)
    return dh, dw
