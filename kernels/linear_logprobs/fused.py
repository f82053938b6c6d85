"""Triton passes of the linear-token statistics: kernels, their per-chunk launchers and the CUDA launch table.

The logits chunk ``x = h_c @ W.T`` [Tc, V] comes from the vendor GEMM (``chunked.py`` runs the chunk loop);
:func:`linear_logprobs_fwd` reduces it to the rows' statistics (an online logsumexp over vocab tiles) and
:func:`linear_logprobs_bwd` overwrites it in place with d(loss)/d(logits).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dispatch import triton_interpret

CHUNK_BYTES = 512 * 2**20  # a Triton logits chunk stays near this size
INTERPRET_TOKEN_CHUNK = 32
INTERPRET_BV = 512
# CUDA launch of both kernels: BT rows x BV vocab columns per tile (tests/kernels/test_aot_compile.py compiles
# them with it for sm_80 and sm_90).
CUDA_LAUNCH = dict(BT=4, BV=1024, num_warps=8, num_stages=3)
_NEG = tl.constexpr(-1.0e30)  # running maxima start here: finite, so a fully masked lane stays NaN-free


@triton.jit
def linear_logprobs_fwd_kernel(x, targets, tgt, lse, ent, lsum, T, V, inv_temp,
                      BT: tl.constexpr, BV: tl.constexpr, ENTROPY: tl.constexpr, SUM: tl.constexpr):
    """One program per BT token rows of the logits chunk x [T, V]: online logsumexp over vocab tiles."""
    i_t = tl.program_id(0)
    o_t = i_t.to(tl.int64) * BT + tl.arange(0, BT)
    m_t = o_t < T
    p_rows = x + o_t[:, None] * V
    b_m = tl.full([BT, BV], _NEG, tl.float32)
    b_s = tl.zeros([BT, BV], tl.float32)
    b_u = tl.zeros([BT, BV], tl.float32)
    b_sum = tl.zeros([BT, BV], tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        b_z = tl.load(p_rows + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32) * inv_temp
        b_z = tl.where(m_tv, b_z, _NEG)
        b_mn = tl.maximum(b_m, b_z)
        b_a = tl.exp(b_m - b_mn)
        b_e = tl.where(m_tv, tl.exp(b_z - b_mn), 0.0)
        b_s = b_s * b_a + b_e
        if ENTROPY:
            b_u = b_u * b_a + b_e * tl.where(m_tv, b_z, 0.0)
        if SUM:
            b_sum += tl.where(m_tv, b_z, 0.0)
        b_m = b_mn
    b_max = tl.max(b_m, 1)
    b_a = tl.exp(b_m - b_max[:, None])
    b_tot = tl.where(m_t, tl.sum(b_s * b_a, 1), 1.0)
    b_lse = b_max + tl.log(b_tot)
    tl.store(lse + o_t, b_lse, mask=m_t)
    if ENTROPY:
        tl.store(ent + o_t, b_lse - tl.sum(b_u * b_a, 1) / b_tot, mask=m_t)
    if SUM:
        tl.store(lsum + o_t, tl.sum(b_sum, 1), mask=m_t)
    b_y = tl.load(targets + o_t, mask=m_t, other=-1)
    b_tz = tl.load(x + o_t * V + b_y, mask=m_t & (b_y >= 0), other=0.0).to(tl.float32) * inv_temp
    tl.store(tgt + o_t, b_tz, mask=m_t)


@triton.jit
def linear_logprobs_bwd_kernel(x, targets, lse, ent, g_tgt, g_lse, g_ent, g_sum, T, V, inv_temp,
                      BT: tl.constexpr, BV: tl.constexpr, ENTROPY: tl.constexpr, SUM: tl.constexpr):
    """Overwrite BT rows of the recomputed logits chunk x [T, V] with d(loss)/d(logits)."""
    i_t = tl.program_id(0)
    o_t = i_t.to(tl.int64) * BT + tl.arange(0, BT)
    m_t = o_t < T
    p_rows = x + o_t[:, None] * V
    b_lse = tl.load(lse + o_t, mask=m_t, other=0.0)[:, None]
    b_gt = tl.load(g_tgt + o_t, mask=m_t, other=0.0)[:, None]
    b_gl = tl.load(g_lse + o_t, mask=m_t, other=0.0)[:, None]
    b_y = tl.load(targets + o_t, mask=m_t, other=-1)[:, None]
    if ENTROPY:
        b_h = tl.load(ent + o_t, mask=m_t, other=0.0)[:, None]
        b_gh = tl.load(g_ent + o_t, mask=m_t, other=0.0)[:, None]
    if SUM:
        b_gs = tl.load(g_sum + o_t, mask=m_t, other=0.0)[:, None]
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        b_z = tl.load(p_rows + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32) * inv_temp
        b_p = tl.exp(b_z - b_lse)
        b_d = b_gl * b_p
        if ENTROPY:
            b_d -= b_gh * b_p * (b_z - b_lse + b_h)
        if SUM:
            b_d += b_gs
        b_d = tl.where(o_v[None, :] == b_y, b_d + b_gt, b_d)
        tl.store(p_rows + o_v[None, :], (b_d * inv_temp).to(x.dtype.element_ty), mask=m_tv)


def triton_tiles(hidden: torch.Tensor, V: int) -> tuple[int, dict]:
    """(token chunk, launch options: row block BT, vocab tile BV, num_warps, num_stages) for this device.

    Under the interpreter one program takes a whole small chunk (its cost is per program, not per element).
    """
    if not hidden.is_cuda and triton_interpret():
        return INTERPRET_TOKEN_CHUNK, dict(BT=INTERPRET_TOKEN_CHUNK, BV=INTERPRET_BV, num_warps=1, num_stages=1)
    rows = max(128, CHUNK_BYTES // (V * hidden.element_size()) // 128 * 128)
    return rows, CUDA_LAUNCH


def linear_logprobs_fwd(x, y, inv_temp, tgt, lse, ent, lsum, need_ent, need_sum) -> None:
    """Statistics of the logits chunk x [n, V] (input dtype, temperature not applied) into the [n] slices."""
    launch = triton_tiles(x, x.shape[1])[1]
    linear_logprobs_fwd_kernel[(triton.cdiv(x.shape[0], launch["BT"]),)](
        x, y, tgt, lse, ent, lsum, x.shape[0], x.shape[1], inv_temp, ENTROPY=need_ent, SUM=need_sum, **launch,
    )


def linear_logprobs_bwd(x, y, inv_temp, lse, ent, g_tgt, g_lse, g_ent, g_sum) -> None:
    """Overwrite the logits chunk x [n, V] with d(loss)/d(logits), given the upstream [n] gradients."""
    launch = triton_tiles(x, x.shape[1])[1]
    linear_logprobs_bwd_kernel[(triton.cdiv(x.shape[0], launch["BT"]),)](
        x, y, lse, ent if g_ent is not None else lse, g_tgt, g_lse,
        g_ent if g_ent is not None else g_lse, g_sum if g_sum is not None else g_lse,
        x.shape[0], x.shape[1], inv_temp, ENTROPY=g_ent is not None, SUM=g_sum is not None, **launch,
    )
