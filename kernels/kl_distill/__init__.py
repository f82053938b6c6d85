"""Fused linear distillation KL: KL / JSD between a teacher's and a student's token distributions,
computed from hidden states and LM-head weights without ever building either [T, V] logits tensor.

Conventions (``tau`` = temperature, ``p`` = teacher, ``q`` = student, per token):

- ``s = (student_hidden @ student_weight.T) / tau``, ``t = (teacher_hidden @ teacher_weight.T) / tau``,
  ``q = softmax(s)``, ``p = softmax(t)`` over the vocabulary.
- ``kind="forward"``: KL(p || q) = sum_v p (log p - log q)   (mode covering; classic distillation).
- ``kind="reverse"``: KL(q || p) = sum_v q (log q - log p)   (mode seeking).
- ``kind="jsd"``: with ``b = jsd_beta`` and the mixture ``m = b p + (1 - b) q``,
  JSD_b = b KL(p || m) + (1 - b) KL(q || m); ``b = 0.5`` is the usual Jensen-Shannon divergence (<= log 2).
- The loss is NOT multiplied by tau**2 (Hinton et al. do that to keep gradient scale across temperatures);
  multiply by ``temperature ** 2`` yourself if you want that convention.
- Only the student gets gradients (to its hidden states and head weight); the teacher is treated as constant.

Algorithm (Triton path):

- forward/reverse KL: one pass over vocab tiles per token tile, with online logsumexps of s and t and an
  online sum of exp(t - m_t) (t - s) (forward; rescaled when the teacher max moves) or exp(s - m_s) (s - t)
  (reverse); KL = acc / l - lse_own + lse_other. The vocabulary is split over programs when there are few
  token tiles (partial maxima/sums merged in torch, [splits, T] floats).
- jsd: pass 1 as above for the two logsumexps, pass 2 over the vocab tiles again for the two KL-to-mixture sums.
- backward: per chunk of tokens a kernel recomputes the logits tiles and writes dL/ds for the chunk
  ([chunk, V], bounded by a byte budget), then cuBLAS gives d student_hidden = G @ W_s and
  d student_weight += G.T @ h_s. Gradients: forward q - p; reverse q (log q - log p - KL);
  jsd (1 - b) q (log q - log m - KL(q || m)); all times upstream grad / tau.

The torch reference below does the same math chunk by chunk over tokens (never [T, V]); it is the CPU path.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._dispatch import resolve_backend

KINDS = {"forward": 0, "reverse": 1, "jsd": 2}
REDUCTIONS = ("mean", "sum", "none")
NEG = tl.constexpr(-1.0e30)  # running maxima start here (finite: a fully masked lane stays NaN-free)
# Torch path: fp32 elements per [chunk, V] temporary (the chunk holds ~8 of them).
_CHUNK_ELEMENTS = 1 << 24
# Triton backward: bytes of the per-chunk gradient-of-logits buffer G [chunk, V].
_GRAD_CHUNK_BYTES = 1 << 29
# CUDA tiles of all three kernels: two fp32 logits tiles stay in registers (tests/kernels/test_aot_compile.py
# compiles the kernels with them for sm_80 and sm_90). The interpreter wants few steps.
CUDA_TILES = dict(BLOCK_T=64, BLOCK_V=64, BLOCK_D=64, num_warps=4, num_stages=3)
_INTERPRET_TILES = dict(BLOCK_T=32, BLOCK_V=128, BLOCK_D=64, num_warps=4, num_stages=1)


# ----------------------------------------------------------------------------------------------- Triton kernels


@triton.jit
def _logits_tile(p_h, p_w, o_t, o_v, m_t, m_v, D, BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr,
                 BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    """fp32 [BLOCK_T, BLOCK_V] tile of h[o_t] @ w[o_v].T (h [T, D], w [V, D], both row-major)."""
    b_z = tl.zeros([BLOCK_T, BLOCK_V], dtype=tl.float32)
    for i_d in range(0, tl.cdiv(D, BLOCK_D)):
        o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
        m_d = o_d < D
        b_h = tl.load(p_h + o_t[:, None] * D + o_d[None, :], mask=m_t[:, None] & m_d[None, :], other=0.0)
        b_w = tl.load(p_w + o_v[:, None] * D + o_d[None, :], mask=m_v[:, None] & m_d[None, :], other=0.0)
        if IEEE:
            b_z += tl.dot(b_h, tl.trans(b_w), input_precision="ieee")
        else:
            b_z += tl.dot(b_h, tl.trans(b_w))
    return b_z


@triton.jit
def _kl_fwd_stats_kernel(p_hs, p_ws, p_ht, p_wt, p_stats, T, V, DS, DT, V_PER_SPLIT, NSPLIT, inv_temp,
                         KIND: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr,
                         BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    """Partial (max_s, sum_s, max_t, sum_t, acc) over one vocab split for one token tile -> stats[5, NSPLIT, T]."""
    i_t = tl.program_id(0)
    i_s = tl.program_id(1)
    o_t = i_t.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)
    m_t = o_t < T
    b_ms = tl.full([BLOCK_T], NEG, dtype=tl.float32)
    b_mt = tl.full([BLOCK_T], NEG, dtype=tl.float32)
    b_ls = tl.zeros([BLOCK_T], dtype=tl.float32)
    b_lt = tl.zeros([BLOCK_T], dtype=tl.float32)
    b_acc = tl.zeros([BLOCK_T], dtype=tl.float32)
    v_start = i_s.to(tl.int64) * V_PER_SPLIT
    v_end = tl.minimum(v_start + V_PER_SPLIT, V)
    for v0 in range(v_start, v_end, BLOCK_V):
        o_v = v0 + tl.arange(0, BLOCK_V).to(tl.int64)
        m_v = o_v < v_end
        b_s = _logits_tile(p_hs, p_ws, o_t, o_v, m_t, m_v, DS, BLOCK_T, BLOCK_V, BLOCK_D, IEEE) * inv_temp
        b_t = _logits_tile(p_ht, p_wt, o_t, o_v, m_t, m_v, DT, BLOCK_T, BLOCK_V, BLOCK_D, IEEE) * inv_temp
        b_s = tl.where(m_v[None, :], b_s, NEG)
        b_t = tl.where(m_v[None, :], b_t, NEG)
        b_ms_new = tl.maximum(b_ms, tl.max(b_s, 1))
        b_mt_new = tl.maximum(b_mt, tl.max(b_t, 1))
        b_as = tl.exp(b_ms - b_ms_new)
        b_at = tl.exp(b_mt - b_mt_new)
        b_es = tl.where(m_v[None, :], tl.exp(b_s - b_ms_new[:, None]), 0.0)
        b_et = tl.where(m_v[None, :], tl.exp(b_t - b_mt_new[:, None]), 0.0)
        b_ls = b_ls * b_as + tl.sum(b_es, 1)
        b_lt = b_lt * b_at + tl.sum(b_et, 1)
        if KIND == 0:
            b_acc = b_acc * b_at + tl.sum(b_et * (b_t - b_s), 1)
        elif KIND == 1:
            b_acc = b_acc * b_as + tl.sum(b_es * (b_s - b_t), 1)
        b_ms = b_ms_new
        b_mt = b_mt_new
    p_out = p_stats + i_s * T + o_t
    tl.store(p_out, b_ms, mask=m_t)
    tl.store(p_out + NSPLIT * T, b_ls, mask=m_t)
    tl.store(p_out + 2 * NSPLIT * T, b_mt, mask=m_t)
    tl.store(p_out + 3 * NSPLIT * T, b_lt, mask=m_t)
    tl.store(p_out + 4 * NSPLIT * T, b_acc, mask=m_t)


@triton.jit
def _log_mixture(b_lp, b_lq, beta):
    """log(beta exp(lp) + (1 - beta) exp(lq)), stable."""
    b_a = b_lp + tl.log(beta)
    b_b = b_lq + tl.log(1.0 - beta)
    b_m = tl.maximum(b_a, b_b)
    return b_m + tl.log(tl.exp(b_a - b_m) + tl.exp(b_b - b_m))


@triton.jit
def _jsd_fwd_kernel(p_hs, p_ws, p_ht, p_wt, p_lse_s, p_lse_t, p_parts, T, V, DS, DT, V_PER_SPLIT, NSPLIT,
                    inv_temp, beta, BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                    IEEE: tl.constexpr):
    """Partial sum_v p (log p - log m) and sum_v q (log q - log m) over one vocab split -> parts[2, NSPLIT, T]."""
    i_t = tl.program_id(0)
    i_s = tl.program_id(1)
    o_t = i_t.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)
    m_t = o_t < T
    b_lse_s = tl.load(p_lse_s + o_t, mask=m_t, other=0.0)
    b_lse_t = tl.load(p_lse_t + o_t, mask=m_t, other=0.0)
    b_kp = tl.zeros([BLOCK_T], dtype=tl.float32)
    b_kq = tl.zeros([BLOCK_T], dtype=tl.float32)
    v_start = i_s.to(tl.int64) * V_PER_SPLIT
    v_end = tl.minimum(v_start + V_PER_SPLIT, V)
    for v0 in range(v_start, v_end, BLOCK_V):
        o_v = v0 + tl.arange(0, BLOCK_V).to(tl.int64)
        m_v = o_v < v_end
        b_s = _logits_tile(p_hs, p_ws, o_t, o_v, m_t, m_v, DS, BLOCK_T, BLOCK_V, BLOCK_D, IEEE) * inv_temp
        b_t = _logits_tile(p_ht, p_wt, o_t, o_v, m_t, m_v, DT, BLOCK_T, BLOCK_V, BLOCK_D, IEEE) * inv_temp
        b_lq = b_s - b_lse_s[:, None]
        b_lp = b_t - b_lse_t[:, None]
        b_lm = _log_mixture(b_lp, b_lq, beta)
        b_kp += tl.sum(tl.where(m_v[None, :], tl.exp(b_lp) * (b_lp - b_lm), 0.0), 1)
        b_kq += tl.sum(tl.where(m_v[None, :], tl.exp(b_lq) * (b_lq - b_lm), 0.0), 1)
    p_out = p_parts + i_s * T + o_t
    tl.store(p_out, b_kp, mask=m_t)
    tl.store(p_out + NSPLIT * T, b_kq, mask=m_t)


@triton.jit
def _kl_bwd_kernel(p_hs, p_ws, p_ht, p_wt, p_lse_s, p_lse_t, p_aux, p_scale, p_g, T, V, DS, DT, inv_temp, beta,
                   KIND: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                   IEEE: tl.constexpr):
    """G[T, V] = dL/ds * scale (scale = upstream grad / tau), recomputing the logits tiles."""
    i_t = tl.program_id(0)
    i_v = tl.program_id(1)
    o_t = i_t.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)
    o_v = i_v.to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V).to(tl.int64)
    m_t = o_t < T
    m_v = o_v < V
    b_s = _logits_tile(p_hs, p_ws, o_t, o_v, m_t, m_v, DS, BLOCK_T, BLOCK_V, BLOCK_D, IEEE) * inv_temp
    b_t = _logits_tile(p_ht, p_wt, o_t, o_v, m_t, m_v, DT, BLOCK_T, BLOCK_V, BLOCK_D, IEEE) * inv_temp
    b_lq = b_s - tl.load(p_lse_s + o_t, mask=m_t, other=0.0)[:, None]
    b_lp = b_t - tl.load(p_lse_t + o_t, mask=m_t, other=0.0)[:, None]
    b_aux = tl.load(p_aux + o_t, mask=m_t, other=0.0)
    b_q = tl.exp(b_lq)
    if KIND == 0:
        b_g = b_q - tl.exp(b_lp)
    elif KIND == 1:
        b_g = b_q * (b_lq - b_lp - b_aux[:, None])
    else:
        b_g = (1.0 - beta) * b_q * (b_lq - _log_mixture(b_lp, b_lq, beta) - b_aux[:, None])
    b_g = b_g * tl.load(p_scale + o_t, mask=m_t, other=0.0)[:, None]
    tl.store(p_g + o_t[:, None] * V + o_v[None, :], b_g.to(p_g.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])


# ----------------------------------------------------------------------------------------------- launchers


def _tiles(device: torch.device) -> dict:
    """Launch options for this device, plus ``programs``: how many programs fill it."""
    if device.type == "cuda":
        return dict(CUDA_TILES, programs=4 * _sm_count(device))
    return dict(_INTERPRET_TILES, programs=4)


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _split_vocab(n_token_tiles: int, V: int, block_v: int, programs: int) -> tuple[int, int]:
    """(vocab columns per split, number of splits) so that token tiles x splits fills ``programs``."""
    v_tiles = triton.cdiv(V, block_v)
    want = max(1, min(v_tiles, triton.cdiv(programs, n_token_tiles)))
    per_split = triton.cdiv(v_tiles, want) * block_v
    return per_split, triton.cdiv(V, per_split)


def _merge_max_sum(m: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge per-split running (max, sum of exp) [NSPLIT, T] -> (max [T], sum [T], rescale [NSPLIT, T])."""
    m_all = m.max(0).values
    scale = torch.exp(m - m_all)
    return m_all, (s * scale).sum(0), scale


def _fwd_triton(hs, ws, ht, wt, inv_temp: float, kind: int, beta: float):
    """-> per-token loss [T], lse_s [T], lse_t [T], aux [T] (reverse: KL; jsd: KL(q || m)); all fp32."""
    T, V = hs.shape[0], ws.shape[0]
    cfg = _tiles(hs.device)
    ieee = hs.dtype == torch.float32
    n_t = triton.cdiv(T, cfg["BLOCK_T"])
    per_split, n_split = _split_vocab(n_t, V, cfg["BLOCK_V"], cfg["programs"])
    stats = torch.empty(5, n_split, T, device=hs.device, dtype=torch.float32)
    launch = dict(BLOCK_T=cfg["BLOCK_T"], BLOCK_V=cfg["BLOCK_V"], BLOCK_D=cfg["BLOCK_D"], IEEE=ieee,
                  num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    _kl_fwd_stats_kernel[(n_t, n_split)](hs, ws, ht, wt, stats, T, V, hs.shape[1], ht.shape[1], per_split, n_split,
                                         inv_temp, KIND=kind, **launch)
    m_s, l_s, scale_s = _merge_max_sum(stats[0], stats[1])
    m_t, l_t, scale_t = _merge_max_sum(stats[2], stats[3])
    lse_s = m_s + torch.log(l_s)
    lse_t = m_t + torch.log(l_t)
    if kind == 0:
        loss = (stats[4] * scale_t).sum(0) / l_t - lse_t + lse_s
        return loss, lse_s, lse_t, loss
    if kind == 1:
        loss = (stats[4] * scale_s).sum(0) / l_s - lse_s + lse_t
        return loss, lse_s, lse_t, loss
    parts = torch.empty(2, n_split, T, device=hs.device, dtype=torch.float32)
    _jsd_fwd_kernel[(n_t, n_split)](hs, ws, ht, wt, lse_s, lse_t, parts, T, V, hs.shape[1], ht.shape[1], per_split,
                                    n_split, inv_temp, beta, **launch)
    kl_p, kl_q = parts.sum(1)
    return beta * kl_p + (1.0 - beta) * kl_q, lse_s, lse_t, kl_q


def _grad_chunk_tokens(T: int, V: int, elem_bytes: int, block_t: int, budget: int) -> int:
    chunk = max(block_t, (budget // max(1, V * elem_bytes)) // block_t * block_t)
    return min(T, chunk)


def _bwd_triton(hs, ws, ht, wt, lse_s, lse_t, aux, scale, inv_temp: float, kind: int, beta: float,
                need_dh: bool, need_dw: bool):
    """G chunk by chunk (Triton, logits recomputed), then d h_s = G @ W_s and d W_s = sum G.T @ h_s (cuBLAS)."""
    T, V = hs.shape[0], ws.shape[0]
    cfg = _tiles(hs.device)
    chunk = _grad_chunk_tokens(T, V, hs.element_size(), cfg["BLOCK_T"], _GRAD_CHUNK_BYTES)
    dh = torch.empty_like(hs) if need_dh else None
    multi = chunk < T
    dw = None
    if need_dw:
        dw = torch.zeros(ws.shape, device=ws.device, dtype=torch.float32) if multi else torch.empty_like(ws)
    g = torch.empty(chunk, V, device=hs.device, dtype=hs.dtype)
    for c0 in range(0, T, chunk):
        c1 = min(T, c0 + chunk)
        n = c1 - c0
        g_c = g[:n]
        grid = (triton.cdiv(n, cfg["BLOCK_T"]), triton.cdiv(V, cfg["BLOCK_V"]))
        _kl_bwd_kernel[grid](hs[c0:c1], ws, ht[c0:c1], wt, lse_s[c0:c1], lse_t[c0:c1], aux[c0:c1], scale[c0:c1], g_c,
                             n, V, hs.shape[1], ht.shape[1], inv_temp, beta, KIND=kind, BLOCK_T=cfg["BLOCK_T"],
                             BLOCK_V=cfg["BLOCK_V"], BLOCK_D=cfg["BLOCK_D"], IEEE=hs.dtype == torch.float32,
                             num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        if need_dh:
            torch.matmul(g_c, ws, out=dh[c0:c1])
        if need_dw:
            if multi:
                dw.add_(g_c.t() @ hs[c0:c1])
            else:
                torch.matmul(g_c.t(), hs[c0:c1], out=dw)
    if dw is not None:
        dw = dw.to(ws.dtype)
    return dh, dw


# ----------------------------------------------------------------------------------------------- torch reference


def _chunk_tokens(V: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, V))


def _log_probs(h: torch.Tensor, w: torch.Tensor, inv_temp: float) -> torch.Tensor:
    return torch.log_softmax((h @ w.t()).float() * inv_temp, dim=-1)


def _log_mixture_torch(lp: torch.Tensor, lq: torch.Tensor, beta: float) -> torch.Tensor:
    return torch.logaddexp(lp + math.log(beta), lq + math.log1p(-beta))


def _fwd_torch(hs, ws, ht, wt, inv_temp: float, kind: int, beta: float):
    """Chunked reference forward; same outputs as ``_fwd_triton``."""
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


def _bwd_torch(hs, ws, ht, wt, lse_s, lse_t, aux, scale, inv_temp: float, kind: int, beta: float,
               need_dh: bool, need_dw: bool):
    """Chunked reference backward; same outputs as ``_bwd_triton``."""
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


# ----------------------------------------------------------------------------------------------- autograd


class LinearKLDistillFunction(torch.autograd.Function):
    """Per-token divergence [T] from (student_hidden, student_weight); teacher inputs get no gradient."""

    @staticmethod
    def forward(ctx, hs, ws, ht, wt, temperature: float, kind: int, beta: float, backend: str):
        hs, ws, ht, wt = (x.contiguous() for x in (hs, ws, ht, wt))
        inv_temp = 1.0 / temperature
        if hs.shape[0] == 0:
            loss = lse_s = lse_t = aux = hs.new_zeros(0, dtype=torch.float32)
        else:
            fwd = _fwd_triton if backend == "triton" else _fwd_torch
            loss, lse_s, lse_t, aux = fwd(hs, ws, ht, wt, inv_temp, kind, beta)
        ctx.save_for_backward(hs, ws, ht, wt, lse_s, lse_t, aux)
        ctx.args = (inv_temp, kind, beta, backend)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        hs, ws, ht, wt, lse_s, lse_t, aux = ctx.saved_tensors
        inv_temp, kind, beta, backend = ctx.args
        need_dh, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if hs.shape[0] == 0:
            dh = torch.zeros_like(hs) if need_dh else None
            dw = torch.zeros_like(ws) if need_dw else None
        else:
            scale = (grad_loss.float() * inv_temp).contiguous()
            bwd = _bwd_triton if backend == "triton" else _bwd_torch
            dh, dw = bwd(hs, ws, ht, wt, lse_s, lse_t, aux, scale, inv_temp, kind, beta, need_dh, need_dw)
        return dh, dw, None, None, None, None, None, None


# ----------------------------------------------------------------------------------------------- public API


def linear_kl_distill(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    loss_mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    kind: str = "forward",
    reduction: str = "mean",
    jsd_beta: float = 0.5,
) -> torch.Tensor:
    """Distillation divergence between teacher and student next-token distributions, without [T, V] logits.

    Shapes: student_hidden [T, Ds], student_weight [V, Ds], teacher_hidden [T, Dt], teacher_weight [V, Dt]
    (Ds and Dt may differ; all four share one floating dtype and device), loss_mask [T] (bool, or float
    per-token weights w; None = every token with weight 1).

    ``kind``: "forward" = KL(teacher || student), "reverse" = KL(student || teacher), "jsd" =
    jsd_beta * KL(teacher || M) + (1 - jsd_beta) * KL(student || M) with M = jsd_beta * teacher +
    (1 - jsd_beta) * student, 0 < jsd_beta < 1. Both distributions are softmax(logits / temperature); the
    loss is not multiplied by temperature**2.

    ``reduction``: "mean" -> sum_t w_t D_t / sum_t w_t (0 when every token is masked), "sum" -> sum_t w_t D_t,
    "none" -> [T] fp32 with w_t D_t (0 at masked tokens). Returns an fp32 tensor.

    Gradients flow to student_hidden and student_weight only; the teacher is treated as a constant.
    Tokens with weight 0 are dropped before the kernels run (they cost nothing).
    """
    name = "linear_kl_distill"
    if student_hidden.dim() != 2 or student_weight.dim() != 2:
        raise ValueError(f"{name}: student_hidden must be [T, Ds] and student_weight [V, Ds]; got "
                         f"{tuple(student_hidden.shape)} and {tuple(student_weight.shape)}")
    if teacher_hidden.dim() != 2 or teacher_weight.dim() != 2:
        raise ValueError(f"{name}: teacher_hidden must be [T, Dt] and teacher_weight [V, Dt]; got "
                         f"{tuple(teacher_hidden.shape)} and {tuple(teacher_weight.shape)}")
    T, Ds = student_hidden.shape
    V = student_weight.shape[0]
    if student_weight.shape[1] != Ds:
        raise ValueError(f"{name}: student_weight {tuple(student_weight.shape)} must be [V, Ds] with Ds={Ds} "
                         f"from student_hidden {tuple(student_hidden.shape)}")
    if teacher_hidden.shape[0] != T:
        raise ValueError(f"{name}: teacher_hidden {tuple(teacher_hidden.shape)} must have T={T} rows like "
                         f"student_hidden {tuple(student_hidden.shape)}")
    if teacher_weight.shape != (V, teacher_hidden.shape[1]):
        raise ValueError(f"{name}: teacher_weight {tuple(teacher_weight.shape)} must be [V, Dt] = "
                         f"[{V}, {teacher_hidden.shape[1]}]")
    tensors = (student_hidden, student_weight, teacher_hidden, teacher_weight)
    if not student_hidden.dtype.is_floating_point or any(x.dtype != student_hidden.dtype for x in tensors):
        raise ValueError(f"{name}: hidden states and weights must share one floating dtype; got "
                         f"{[str(x.dtype) for x in tensors]}")
    if any(x.device != student_hidden.device for x in tensors):
        raise ValueError(f"{name}: all inputs must be on one device; got {[str(x.device) for x in tensors]}")
    if loss_mask is None:
        loss_mask = torch.ones(T, dtype=torch.bool, device=student_hidden.device)
    if loss_mask.shape != (T,):
        raise ValueError(f"{name}: loss_mask must be [T] = [{T}], got {tuple(loss_mask.shape)}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"{name}: temperature must be a finite number > 0, got {temperature!r}")
    if kind not in KINDS:
        raise ValueError(f"{name}: kind must be one of {tuple(KINDS)}, got {kind!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if kind == "jsd" and not 0.0 < jsd_beta < 1.0:
        raise ValueError(f"{name}: jsd_beta must be in (0, 1), got {jsd_beta!r}")

    backend = resolve_backend(name, student_hidden)
    mask = loss_mask.to(student_hidden.device)
    weights = mask.float()
    keep = torch.nonzero(mask != 0).squeeze(1)
    if keep.numel() == T:
        hs, ht, w = student_hidden, teacher_hidden, weights
    else:
        hs, ht, w = student_hidden.index_select(0, keep), teacher_hidden.index_select(0, keep), weights[keep]
    per_token = LinearKLDistillFunction.apply(hs, student_weight, ht.detach(), teacher_weight.detach(),
                                              float(temperature), KINDS[kind], float(jsd_beta), backend)
    weighted = per_token * w
    if reduction == "none":
        if keep.numel() == T:
            return weighted
        return weighted.new_zeros(T).index_copy(0, keep, weighted)
    total = weighted.sum()
    if reduction == "sum":
        return total
    return total / w.sum() if keep.numel() else total


__all__ = ["linear_kl_distill", "LinearKLDistillFunction"]
