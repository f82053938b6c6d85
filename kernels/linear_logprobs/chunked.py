"""The chunk loop of the linear-token statistics, and its pure-torch passes (the CPU path and the bench baseline).

Tokens go in chunks of rows; per chunk one GEMM gives the logits chunk ``h_c @ W.T`` [Tc, V], a reduction pass
gives the rows' statistics, and for gradients the chunk is overwritten in place with d(loss)/d(logits) and two
more GEMMs give the chunk's rows of d hidden (``dlogits @ W``) and its share of d weight (``dlogits.T @ h_c``).
The passes are Triton (``fused.py``) or the torch code here, which works on fp32 chunks of ``TORCH_TOKEN_CHUNK``
rows (a fixed count: ``vt_core.generation.exact`` pads batches by it for per-row bitwise invariance) times the
whole vocabulary, one GEMM each for fp32 weights (wide GEMMs use a CPU core better than vocabulary tiles do);
half weights are converted to fp32 ``TORCH_VOCAB_CHUNK`` rows at a time, and the elementwise passes walk
vocabulary tiles of that width so their temporaries stay small.
"""

from __future__ import annotations

import torch

from .fused import linear_logprobs_bwd, linear_logprobs_fwd, triton_tiles

TORCH_TOKEN_CHUNK = 128  # 78 MiB of fp32 logits at V=151936: 1/15 of the naive CE's extra memory at T=1024
TORCH_VOCAB_CHUNK = 8192


def _vocab_tiles(V: int) -> list[tuple[int, int]]:
    return [(v0, min(V, v0 + TORCH_VOCAB_CHUNK)) for v0 in range(0, V, TORCH_VOCAB_CHUNK)]


def _weight_tiles(weight: torch.Tensor):
    """(v0, v1, fp32 rows of the weight): one tile of all V for fp32 weights (the fastest GEMM), else
    vocabulary tiles converted one at a time (never an fp32 copy of the whole head)."""
    if weight.dtype == torch.float32:
        return [(0, weight.shape[0], weight)]
    return [(v0, v1, weight[v0:v1].float()) for v0, v1 in _vocab_tiles(weight.shape[0])]


def _torch_logits(hs: torch.Tensor, weight: torch.Tensor, z: torch.Tensor) -> None:
    """z [n, V] (fp32) = hs @ weight.T, hs: fp32 rows already divided by the temperature."""
    if weight.dtype == torch.float32:
        torch.mm(hs, weight.T, out=z)
        return
    for v0, v1, w in _weight_tiles(weight):
        z[:, v0:v1] = hs @ w.T


def _torch_stats(z, y, tgt, lse, ent, lsum, need_ent, need_sum):
    """Statistics of the fp32 logits chunk z [n, V] into the [n] slices tgt/lse/ent/lsum."""
    m = z.amax(dim=1, keepdim=True)
    s = torch.zeros_like(lse)
    u = torch.zeros_like(lse)
    for v0, v1 in _vocab_tiles(z.shape[1]):
        e = torch.sub(z[:, v0:v1], m).exp_()
        s += e.sum(dim=1)
        if need_ent:
            u += e.mul_(z[:, v0:v1]).sum(dim=1)
    torch.add(m[:, 0], torch.log(s), out=lse)
    if need_ent:
        torch.sub(lse, u / s, out=ent)
    if need_sum:
        torch.sum(z, dim=1, out=lsum)
    tgt.copy_(torch.where(y >= 0, z.gather(1, y.clamp(min=0)[:, None])[:, 0], 0.0))


def _torch_dlogits(z, y, lse, ent, g_tgt, g_lse, g_ent, g_sum):
    """Overwrite the fp32 logits chunk z [n, V] with d(loss)/dz, given the upstream [n] gradients."""
    lse_minus_h = None if g_ent is None else (lse - ent)[:, None]
    for v0, v1 in _vocab_tiles(z.shape[1]):
        zt = z[:, v0:v1]
        p = torch.sub(zt, lse[:, None]).exp_()
        if g_ent is None:
            zt.copy_(p.mul_(g_lse[:, None]))
        else:
            zt.sub_(lse_minus_h).mul_(-g_ent[:, None]).add_(g_lse[:, None]).mul_(p)
        if g_sum is not None:
            zt.add_(g_sum[:, None])
    z.scatter_add_(1, y.clamp(min=0)[:, None], torch.where(y >= 0, g_tgt, 0.0)[:, None])


def row_chunks(hidden: torch.Tensor, V: int, backend: str) -> list[tuple[int, int]]:
    T = hidden.shape[0]
    rows = triton_tiles(hidden, V)[0] if backend == "triton" else TORCH_TOKEN_CHUNK
    return [(t0, min(T, t0 + rows)) for t0 in range(0, T, rows)]


def logits_buffer(hidden, weight, backend, chunks) -> torch.Tensor:
    """One logits chunk, reused by every chunk: fp32 on the torch path, the input dtype for Triton."""
    rows = max((t1 - t0 for t0, t1 in chunks), default=0)
    dtype = torch.float32 if backend == "torch" else hidden.dtype
    return torch.empty(rows, weight.shape[0], device=hidden.device, dtype=dtype)


def chunk_logits(backend, hidden, weight, t0, t1, inv_temp, buf):
    """(logits chunk in ``buf``, the rows the weight gradient multiplies): the raw logits in the input dtype for
    Triton (its kernels apply the temperature), fp32 logits of rows pre-divided by the temperature for torch."""
    x = buf[: t1 - t0]
    if backend == "triton":
        h = hidden[t0:t1]
        torch.mm(h, weight.T, out=x)
        return x, h
    hs = hidden[t0:t1].float()
    hs = hs * inv_temp if inv_temp != 1.0 else hs
    _torch_logits(hs, weight, x)
    return x, hs


def chunk_stats(backend, x, y, inv_temp, tgt, lse, ent, lsum, need_ent, need_sum):
    if backend == "torch":
        _torch_stats(x, y, tgt, lse, ent, lsum, need_ent, need_sum)
        return
    linear_logprobs_fwd(x, y, inv_temp, tgt, lse, ent, lsum, need_ent, need_sum)


def chunk_grads(backend, x, hs, weight, y, inv_temp, lse, ent, g_tgt, g_lse, g_ent, g_sum, dh, dw, first):
    """Turn the logits chunk x into d(loss)/d(logits) in place, then write the chunk's rows of dh and add its
    share of dw (``first``: dw holds no earlier chunk yet, so it is written rather than accumulated)."""
    beta = 0.0 if first else 1.0
    if backend == "torch":
        _torch_dlogits(x, y, lse, ent, g_tgt, g_lse, g_ent, g_sum)
        for v0, v1, w in _weight_tiles(weight):
            d = x[:, v0:v1]
            if dh is not None:
                dh.addmm_(d, w, beta=0.0 if v0 == 0 else 1.0, alpha=inv_temp)
            if dw is not None:
                dw[v0:v1].addmm_(d.T, hs, beta=beta)
        return
    linear_logprobs_bwd(x, y, inv_temp, lse, ent, g_tgt, g_lse, g_ent, g_sum)
    if dh is not None:
        torch.mm(x, weight, out=dh)
    if dw is not None:
        dw.addmm_(x.T, hs, beta=beta)


def grad_buffers(hidden, weight, backend, need_dh, need_dw):
    """Gradient buffers: fp32 on the torch path, the input dtype on the Triton path (whose GEMMs accumulate in
    fp32 and round once per chunk). Left uninitialised: every row of dh is written once, and dw is written by
    the first chunk (zeros when there are no tokens)."""
    dtype = torch.float32 if backend == "torch" else hidden.dtype
    dh = torch.empty(hidden.shape, device=hidden.device, dtype=dtype) if need_dh else None
    alloc = torch.zeros if hidden.shape[0] == 0 else torch.empty
    dw = alloc(weight.shape, device=weight.device, dtype=dtype) if need_dw else None
    return dh, dw


def new_stats(hidden: torch.Tensor) -> list[torch.Tensor]:
    return [torch.zeros(hidden.shape[0], device=hidden.device, dtype=torch.float32) for _ in range(4)]


def token_stats_forward(hidden, weight, targets, inv_temp, need_ent, need_sum, backend):
    stats = new_stats(hidden)
    chunks = row_chunks(hidden, weight.shape[0], backend)
    buf = logits_buffer(hidden, weight, backend, chunks)
    for t0, t1 in chunks:
        x, _ = chunk_logits(backend, hidden, weight, t0, t1, inv_temp, buf)
        chunk_stats(backend, x, targets[t0:t1], inv_temp, *(s[t0:t1] for s in stats), need_ent, need_sum)
    return stats


def token_stats_backward(hidden, weight, targets, inv_temp, lse, ent, g_tgt, g_lse, g_ent, g_sum, need_dh, need_dw,
                         backend):
    """The recompute backward: every logits chunk is computed again and turned into its gradient."""
    dh, dw = grad_buffers(hidden, weight, backend, need_dh, need_dw)
    chunks = row_chunks(hidden, weight.shape[0], backend)
    buf = logits_buffer(hidden, weight, backend, chunks)
    for t0, t1 in chunks:
        x, hs = chunk_logits(backend, hidden, weight, t0, t1, inv_temp, buf)
        rows = slice(t0, t1)
        chunk_grads(backend, x, hs, weight, targets[rows], inv_temp, lse[rows], ent[rows], g_tgt[rows],
                     g_lse[rows], None if g_ent is None else g_ent[rows], None if g_sum is None else g_sum[rows],
                     None if dh is None else dh[rows], dw, t0 == 0)
    return (None if dh is None else dh.to(hidden.dtype)), (None if dw is None else dw.to(weight.dtype))


def upstream(g, like):
    return torch.zeros_like(like) if g is None else g.float().contiguous()
