"""Triton kernels of the fused distillation divergence, their launchers and the CUDA launch table.

The kernels do the head GEMMs themselves: each program computes fp32 [BT, BV] logits tiles of the student and
the teacher in registers (``_logits_tile``), so no logits chunk ever reaches memory in the forward.

- forward/reverse KL (:func:`kl_distill_fwd`): one pass over vocab tiles per token tile, with online
  logsumexps of s and t and an online sum of exp(t - m_t) (t - s) (forward; rescaled when the teacher max moves)
  or exp(s - m_s) (s - t) (reverse); KL = acc / l - lse_own + lse_other. The vocabulary is split over programs
  when there are few token tiles (partial maxima/sums merged in torch, [splits, T] floats).
- jsd: pass 1 as above for the two logsumexps, pass 2 over the vocab tiles again for the two KL-to-mixture sums.
- backward (:func:`kl_distill_bwd`): per chunk of tokens a kernel recomputes the logits tiles and writes dL/ds
  for the chunk ([chunk, V], bounded by ``GRAD_CHUNK_BYTES``), then cuBLAS gives d student_hidden = G @ W_s and
  d student_weight += G.T @ h_s.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_NEG = tl.constexpr(-1.0e30)  # running maxima start here (finite: a fully masked lane stays NaN-free)
# Bytes of the backward's per-chunk gradient-of-logits buffer G [chunk, V].
GRAD_CHUNK_BYTES = 1 << 29
# CUDA tiles of all three kernels: two fp32 logits tiles stay in registers (tests/kernels/test_aot_compile.py
# compiles the kernels with them for sm_80 and sm_90). The interpreter wants few steps.
CUDA_LAUNCH = dict(BT=64, BV=64, BD=64, num_warps=4, num_stages=3)
INTERPRET_LAUNCH = dict(BT=32, BV=128, BD=64, num_warps=4, num_stages=1)


@triton.jit
def _logits_tile(p_h, p_w, o_t, o_v, m_t, m_v, D, inv_temp, BT: tl.constexpr, BV: tl.constexpr,
                 BD: tl.constexpr, IEEE: tl.constexpr):
    """fp32 [BT, BV] tile of h[o_t] @ w[o_v].T * inv_temp (h [T, D], w [V, D], both row-major)."""
    b_z = tl.zeros([BT, BV], dtype=tl.float32)
    for i_d in range(0, tl.cdiv(D, BD)):
        o_d = i_d * BD + tl.arange(0, BD).to(tl.int64)
        m_d = o_d < D
        b_h = tl.load(p_h + o_t[:, None] * D + o_d[None, :], mask=m_t[:, None] & m_d[None, :], other=0.0)
        b_w = tl.load(p_w + o_v[:, None] * D + o_d[None, :], mask=m_v[:, None] & m_d[None, :], other=0.0)
        if IEEE:
            b_z += tl.dot(b_h, tl.trans(b_w), input_precision="ieee")
        else:
            b_z += tl.dot(b_h, tl.trans(b_w))
    return b_z * inv_temp


@triton.jit
def _range_tile(start, end, BLOCK: tl.constexpr):
    """int64 positions start + [0, BLOCK) and their mask (< end)."""
    o_x = start + tl.arange(0, BLOCK).to(tl.int64)
    return o_x, o_x < end


@triton.jit
def _vocab_split(i_s, V_PER_SPLIT, V):
    """Vocab range [v_start, v_end) of split i_s (int64)."""
    v_start = i_s.to(tl.int64) * V_PER_SPLIT
    return v_start, tl.minimum(v_start + V_PER_SPLIT, V)


@triton.jit
def kl_distill_fwd_kernel(p_hs, p_ws, p_ht, p_wt, p_stats, T, V, DS, DT, V_PER_SPLIT, NSPLIT, inv_temp,
                         KIND: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
                         BD: tl.constexpr, IEEE: tl.constexpr):
    """Partial (max_s, sum_s, max_t, sum_t, acc) over one vocab split for one token tile -> stats[5, NSPLIT, T]."""
    i_t = tl.program_id(0)
    i_s = tl.program_id(1)
    o_t, m_t = _range_tile(i_t.to(tl.int64) * BT, T, BT)
    b_ms = tl.full([BT], _NEG, dtype=tl.float32)
    b_mt = tl.full([BT], _NEG, dtype=tl.float32)
    b_ls = tl.zeros([BT], dtype=tl.float32)
    b_lt = tl.zeros([BT], dtype=tl.float32)
    b_acc = tl.zeros([BT], dtype=tl.float32)
    v_start, v_end = _vocab_split(i_s, V_PER_SPLIT, V)
    for v0 in range(v_start, v_end, BV):
        o_v, m_v = _range_tile(v0, v_end, BV)
        b_s = _logits_tile(p_hs, p_ws, o_t, o_v, m_t, m_v, DS, inv_temp, BT, BV, BD, IEEE)
        b_t = _logits_tile(p_ht, p_wt, o_t, o_v, m_t, m_v, DT, inv_temp, BT, BV, BD, IEEE)
        b_s = tl.where(m_v[None, :], b_s, _NEG)
        b_t = tl.where(m_v[None, :], b_t, _NEG)
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
def kl_distill_jsd_fwd_kernel(p_hs, p_ws, p_ht, p_wt, p_lse_s, p_lse_t, p_parts, T, V, DS, DT, V_PER_SPLIT, NSPLIT,
                    inv_temp, beta, BT: tl.constexpr, BV: tl.constexpr, BD: tl.constexpr,
                    IEEE: tl.constexpr):
    """Partial sum_v p (log p - log m) and sum_v q (log q - log m) over one vocab split -> parts[2, NSPLIT, T]."""
    i_t = tl.program_id(0)
    i_s = tl.program_id(1)
    o_t, m_t = _range_tile(i_t.to(tl.int64) * BT, T, BT)
    b_lse_s = tl.load(p_lse_s + o_t, mask=m_t, other=0.0)
    b_lse_t = tl.load(p_lse_t + o_t, mask=m_t, other=0.0)
    b_kp = tl.zeros([BT], dtype=tl.float32)
    b_kq = tl.zeros([BT], dtype=tl.float32)
    v_start, v_end = _vocab_split(i_s, V_PER_SPLIT, V)
    for v0 in range(v_start, v_end, BV):
        o_v, m_v = _range_tile(v0, v_end, BV)
        b_s = _logits_tile(p_hs, p_ws, o_t, o_v, m_t, m_v, DS, inv_temp, BT, BV, BD, IEEE)
        b_t = _logits_tile(p_ht, p_wt, o_t, o_v, m_t, m_v, DT, inv_temp, BT, BV, BD, IEEE)
        b_lq = b_s - b_lse_s[:, None]
        b_lp = b_t - b_lse_t[:, None]
        b_lm = _log_mixture(b_lp, b_lq, beta)
        b_kp += tl.sum(tl.where(m_v[None, :], tl.exp(b_lp) * (b_lp - b_lm), 0.0), 1)
        b_kq += tl.sum(tl.where(m_v[None, :], tl.exp(b_lq) * (b_lq - b_lm), 0.0), 1)
    p_out = p_parts + i_s * T + o_t
    tl.store(p_out, b_kp, mask=m_t)
    tl.store(p_out + NSPLIT * T, b_kq, mask=m_t)


@triton.jit
def kl_distill_bwd_kernel(p_hs, p_ws, p_ht, p_wt, p_lse_s, p_lse_t, p_aux, p_scale, p_g, T, V, DS, DT, inv_temp, beta,
                   KIND: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, BD: tl.constexpr,
                   IEEE: tl.constexpr):
    """G[T, V] = dL/ds * scale (scale = upstream grad / tau), recomputing the logits tiles."""
    i_t = tl.program_id(0)
    i_v = tl.program_id(1)
    o_t, m_t = _range_tile(i_t.to(tl.int64) * BT, T, BT)
    o_v, m_v = _range_tile(i_v.to(tl.int64) * BV, V, BV)
    b_s = _logits_tile(p_hs, p_ws, o_t, o_v, m_t, m_v, DS, inv_temp, BT, BV, BD, IEEE)
    b_t = _logits_tile(p_ht, p_wt, o_t, o_v, m_t, m_v, DT, inv_temp, BT, BV, BD, IEEE)
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


def _tiles(device: torch.device) -> dict:
    """Launch options for this device, plus ``programs``: how many programs fill it."""
    if device.type == "cuda":
        return dict(CUDA_LAUNCH, programs=4 * _sm_count(device))
    return dict(INTERPRET_LAUNCH, programs=4)


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


def kl_distill_fwd(hs, ws, ht, wt, inv_temp: float, kind: int, beta: float):
    """-> per-token loss [T], lse_s [T], lse_t [T], aux [T] (reverse: KL; jsd: KL(q || m)); all fp32."""
    T, V = hs.shape[0], ws.shape[0]
    cfg = _tiles(hs.device)
    ieee = hs.dtype == torch.float32
    n_t = triton.cdiv(T, cfg["BT"])
    per_split, n_split = _split_vocab(n_t, V, cfg["BV"], cfg["programs"])
    stats = torch.empty(5, n_split, T, device=hs.device, dtype=torch.float32)
    launch = dict(BT=cfg["BT"], BV=cfg["BV"], BD=cfg["BD"], IEEE=ieee,
                  num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    kl_distill_fwd_kernel[(n_t, n_split)](hs, ws, ht, wt, stats, T, V, hs.shape[1], ht.shape[1], per_split, n_split,
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
    kl_distill_jsd_fwd_kernel[(n_t, n_split)](hs, ws, ht, wt, lse_s, lse_t, parts, T, V, hs.shape[1], ht.shape[1],
                                              per_split, n_split, inv_temp, beta, **launch)
    kl_p, kl_q = parts.sum(1)
    return beta * kl_p + (1.0 - beta) * kl_q, lse_s, lse_t, kl_q


def _grad_chunk_tokens(T: int, V: int, elem_bytes: int, block_t: int, budget: int) -> int:
    chunk = max(block_t, (budget // max(1, V * elem_bytes)) // block_t * block_t)
    return min(T, chunk)


def kl_distill_bwd(hs, ws, ht, wt, lse_s, lse_t, aux, scale, inv_temp: float, kind: int, beta: float,
                   need_dh: bool, need_dw: bool):
    """G chunk by chunk (Triton, logits recomputed), then d h_s = G @ W_s and d W_s = sum G.T @ h_s (cuBLAS)."""
    T, V = hs.shape[0], ws.shape[0]
    cfg = _tiles(hs.device)
    chunk = _grad_chunk_tokens(T, V, hs.element_size(), cfg["BT"], GRAD_CHUNK_BYTES)
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
        grid = (triton.cdiv(n, cfg["BT"]), triton.cdiv(V, cfg["BV"]))
        kl_distill_bwd_kernel[grid](hs[c0:c1], ws, ht[c0:c1], wt, lse_s[c0:c1], lse_t[c0:c1], aux[c0:c1],
                                    scale[c0:c1], g_c, n, V, hs.shape[1], ht.shape[1], inv_temp, beta, KIND=kind,
                                    BT=cfg["BT"], BV=cfg["BV"], BD=cfg["BD"], IEEE=hs.dtype == torch.float32,
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
