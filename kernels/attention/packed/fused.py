"""Packed attention, Triton: the varlen flash-attention kernels, their ``_fwd``/``_bwd`` launchers and CUDA tables.

Layout: q [T, H, d], k/v [T, Hkv, d] contiguous, documents delimited by cu_seqlens int32 [B+1].
Grid of the forward and dq kernels: (query block within a document, document, q head); of the dk/dv
kernel: (key block within a document, document, kv head), which sums over the q heads of its group
(GQA without atomics). Programs whose block lies past their document's end exit at once, so the grid is
sized by ``max_seqlen`` without reading cu_seqlens on the host. Key/query loops only visit tiles that
the causal / sliding-window mask leaves partly open.

Softmax runs in base 2: scores are scaled by ``softmax_scale * log2(e)`` and the saved logsumexp ``lse``
[H, T] (fp32) is in those units. Running maxima start at a large negative finite value.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_LOG2E = 1.4426950408889634
_NEG = tl.constexpr(-1.0e30)  # a plain float global is a NameError inside @triton.jit on real Triton


@triton.jit
def _tile_mask(o_m, o_n, L, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, WINDOW):
    """[BM, BN] mask of (query o_m, key o_n) pairs that may attend, positions within the document."""
    m_mn = (o_m[:, None] < L) & (o_n[None, :] < L)
    if CAUSAL:
        m_mn = m_mn & (o_n[None, :] <= o_m[:, None])
    if HAS_WINDOW:
        m_mn = m_mn & (o_m[:, None] - o_n[None, :] < WINDOW) & (o_n[None, :] - o_m[:, None] < WINDOW)
    return m_mn


@triton.jit
def _key_range(m0, L, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, WINDOW, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr):
    """Keys [lo, hi) that queries [m0, m0 + BLOCK_M) can see; lo aligned to BLOCK_N."""
    lo = 0
    hi = L
    if CAUSAL:
        hi = tl.minimum(L, m0 + BLOCK_M)
    elif HAS_WINDOW:
        hi = tl.minimum(L, m0 + BLOCK_M + WINDOW - 1)
    if HAS_WINDOW:
        lo = tl.maximum(0, m0 - WINDOW + 1)
        lo = (lo // BLOCK_N) * BLOCK_N
    return lo, hi


@triton.jit
def _doc_block(cu_seqlens, i_b, i_blk, BLOCK: tl.constexpr):
    """Start bos (int64) and length L of document i_b, and m0, the first position of its block i_blk."""
    bos = tl.load(cu_seqlens + i_b).to(tl.int64)
    L = (tl.load(cu_seqlens + i_b + 1).to(tl.int64) - bos).to(tl.int32)
    return bos, L, i_blk * BLOCK


@triton.jit
def _q_block_program(cu_seqlens, BLOCK_M: tl.constexpr):
    """(i_h, bos, L, m0) of a forward / dq program; the last query blocks see the most keys: scheduled first."""
    i_m, i_b, i_h = tl.num_programs(0) - 1 - tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, L, m0 = _doc_block(cu_seqlens, i_b, i_m, BLOCK_M)
    return i_h, bos, L, m0


@triton.jit
def row_offsets(o_row, i_head, HEADS: tl.constexpr, D: tl.constexpr, o_d):
    """int64 offsets [rows, BLOCK_D] of head i_head at rows o_row of a contiguous [rows, HEADS, D] tensor."""
    return (o_row * HEADS + i_head).to(tl.int64)[:, None] * D + o_d[None, :]


@triton.jit
def _tokens(bos, t0, L, i_head, HEADS: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr,
            BLOCK_D: tl.constexpr):
    """Positions o_t = t0 + [0, BLOCK) of the document at bos (length L) at head i_head of a [T, HEADS, D]
    tensor: o_t, m_t (o_t < L), the int64 offsets o_x [BLOCK, BLOCK_D] and their mask m_x."""
    o_t = t0 + tl.arange(0, BLOCK)
    o_d = tl.arange(0, BLOCK_D)
    m_t = o_t < L
    o_x = row_offsets(bos + o_t, i_head, HEADS, D, o_d)
    return o_t, m_t, o_x, m_t[:, None] & (o_d < D)[None, :]


@triton.jit
def load_kv(k, v, o_kv, m_kv):
    """Key and value tiles at offsets o_kv, zero where m_kv is off."""
    return tl.load(k + o_kv, mask=m_kv, other=0.0), tl.load(v + o_kv, mask=m_kv, other=0.0)


@triton.jit
def _q_tokens(bos, m0, L, i_h, H: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_D: tl.constexpr):
    """Query block of a forward / dq program: its kv head i_hk, then _tokens' (o_m, m_m, o_q, m_q)."""
    o_m, m_m, o_q, m_q = _tokens(bos, m0, L, i_h, H, D, BLOCK_M, BLOCK_D)
    return i_h // (H // HKV), o_m, m_m, o_q, m_q


@triton.jit
def _kv_tile(k, v, bos, n0, L, i_hk, HKV: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr,
             BLOCK_D: tl.constexpr):
    """Keys n0 + [0, BLOCK_N) of kv head i_hk: positions o_n, offsets o_kv and mask m_kv, tiles b_k and b_v."""
    o_n, m_n, o_kv, m_kv = _tokens(bos, n0, L, i_hk, HKV, D, BLOCK_N, BLOCK_D)
    b_k, b_v = load_kv(k, v, o_kv, m_kv)
    return o_n, o_kv, m_kv, b_k, b_v


@triton.jit
def softmax_step(b_s, b_v, b_m, b_l, b_acc, PRECISION: tl.constexpr):
    """One online-softmax step (base 2) over scores b_s [M, N] and values b_v [N, D]: new (b_m, b_l, b_acc)."""
    b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
    b_alpha = tl.exp2(b_m - b_m_new)
    b_p = tl.exp2(b_s - b_m_new[:, None])
    b_l = b_l * b_alpha + tl.sum(b_p, 1)
    b_acc = b_acc * b_alpha[:, None] + tl.dot(b_p.to(b_v.dtype), b_v, input_precision=PRECISION)
    return b_m_new, b_l, b_acc


@triton.jit
def _load_q_rows(q, do, lse, delta, o_q, m_q, o_m, m_m, i_h, bos, T):
    """The backward's query-side tiles of head i_h: q, do [BLOCK_M, BLOCK_D], lse and delta [BLOCK_M]."""
    o_s = i_h.to(tl.int64) * T + bos + o_m
    b_q = tl.load(q + o_q, mask=m_q, other=0.0)
    b_do = tl.load(do + o_q, mask=m_q, other=0.0)
    b_lse = tl.load(lse + o_s, mask=m_m, other=0.0)
    b_delta = tl.load(delta + o_s, mask=m_m, other=0.0)
    return b_q, b_do, b_lse, b_delta


@triton.jit
def _bwd_probs(b_q, b_k, b_lse, o_m, o_n, L, qk_scale, WINDOW, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
               PRECISION: tl.constexpr):
    """Softmax probabilities b_p [BLOCK_M, BLOCK_N] of one tile, recomputed from the saved lse; 0 where masked."""
    b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION) * qk_scale
    b_p = tl.exp2(b_s - b_lse[:, None])
    return tl.where(_tile_mask(o_m, o_n, L, CAUSAL, HAS_WINDOW, WINDOW), b_p, 0.0)


@triton.jit
def _bwd_dscores(b_p, b_do, b_v, b_delta, PRECISION: tl.constexpr):
    """Score gradients b_ds = p * (do v^T - delta) of one tile (before sm_scale)."""
    b_dp = tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION)
    return b_p * (b_dp - b_delta[:, None])


@triton.jit
def packed_attn_fwd_kernel(
    q, k, v, o, lse, cu_seqlens, qk_scale, T, WINDOW,
    H: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """o [T, H, d] and lse [H, T] (base 2) of one query block of one document and q head."""
    i_h, bos, L, m0 = _q_block_program(cu_seqlens, BLOCK_M)
    if m0 >= L:
        return
    i_hk, o_m, m_m, o_q, m_q = _q_tokens(bos, m0, L, i_h, H, HKV, D, BLOCK_M, BLOCK_D)
    b_q = tl.load(q + o_q, mask=m_q, other=0.0)

    b_m = tl.full([BLOCK_M], _NEG, dtype=tl.float32)
    b_l = tl.zeros([BLOCK_M], dtype=tl.float32)
    b_acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    lo, hi = _key_range(m0, L, CAUSAL, HAS_WINDOW, WINDOW, BLOCK_M, BLOCK_N)
    for n0 in range(lo, hi, BLOCK_N):
        o_n, o_kv, m_kv, b_k, b_v = _kv_tile(k, v, bos, n0, L, i_hk, HKV, D, BLOCK_N, BLOCK_D)
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION) * qk_scale
        b_s = tl.where(_tile_mask(o_m, o_n, L, CAUSAL, HAS_WINDOW, WINDOW), b_s, float("-inf"))
        b_m, b_l, b_acc = softmax_step(b_s, b_v, b_m, b_l, b_acc, PRECISION)
    b_l = tl.where(b_l > 0, b_l, 1.0)
    b_o = b_acc / b_l[:, None]
    tl.store(o + o_q, b_o.to(o.dtype.element_ty), mask=m_q)
    tl.store(lse + i_h.to(tl.int64) * T + bos + o_m, b_m + tl.log2(b_l), mask=m_m)


@triton.jit
def packed_attn_bwd_preprocess_kernel(o, do, delta, T, H: tl.constexpr, D: tl.constexpr,
                                      BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    """delta[h, t] = sum_d o[t, h, d] * do[t, h, d] in fp32."""
    i_t, i_h = tl.program_id(0), tl.program_id(1)
    o_t = i_t * BLOCK_T + tl.arange(0, BLOCK_T)
    o_d = tl.arange(0, BLOCK_D)
    m_td = (o_t < T)[:, None] & (o_d < D)[None, :]
    o_off = (o_t.to(tl.int64) * H + i_h)[:, None] * D + o_d[None, :]
    b_o = tl.load(o + o_off, mask=m_td, other=0.0).to(tl.float32)
    b_do = tl.load(do + o_off, mask=m_td, other=0.0).to(tl.float32)
    tl.store(delta + i_h.to(tl.int64) * T + o_t, tl.sum(b_o * b_do, 1), mask=o_t < T)


@triton.jit
def packed_attn_bwd_dq_kernel(
    q, k, v, do, lse, delta, dq, cu_seqlens, qk_scale, sm_scale, T, WINDOW,
    H: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dq [T, H, d] of one query block of one document and q head, over the keys it sees."""
    i_h, bos, L, m0 = _q_block_program(cu_seqlens, BLOCK_M)
    if m0 >= L:
        return
    i_hk, o_m, m_m, o_q, m_q = _q_tokens(bos, m0, L, i_h, H, HKV, D, BLOCK_M, BLOCK_D)
    b_q, b_do, b_lse, b_delta = _load_q_rows(q, do, lse, delta, o_q, m_q, o_m, m_m, i_h, bos, T)
    b_dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    lo, hi = _key_range(m0, L, CAUSAL, HAS_WINDOW, WINDOW, BLOCK_M, BLOCK_N)
    for n0 in range(lo, hi, BLOCK_N):
        o_n, o_kv, m_kv, b_k, b_v = _kv_tile(k, v, bos, n0, L, i_hk, HKV, D, BLOCK_N, BLOCK_D)
        b_p = _bwd_probs(b_q, b_k, b_lse, o_m, o_n, L, qk_scale, WINDOW, CAUSAL, HAS_WINDOW, PRECISION)
        b_ds = _bwd_dscores(b_p, b_do, b_v, b_delta, PRECISION)
        b_dq += tl.dot(b_ds.to(b_k.dtype), b_k, input_precision=PRECISION)
    tl.store(dq + o_q, (b_dq * sm_scale).to(dq.dtype.element_ty), mask=m_q)


@triton.jit
def packed_attn_bwd_dkdv_kernel(
    q, k, v, do, lse, delta, dk, dv, cu_seqlens, qk_scale, sm_scale, T, WINDOW,
    H: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dk, dv [T, Hkv, d] of one key block of one document and kv head, summed over its q heads."""
    i_n, i_b, i_hk = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, L, n0 = _doc_block(cu_seqlens, i_b, i_n, BLOCK_N)
    if n0 >= L:
        return
    G: tl.constexpr = H // HKV
    o_n, o_kv, m_kv, b_k, b_v = _kv_tile(k, v, bos, n0, L, i_hk, HKV, D, BLOCK_N, BLOCK_D)
    b_dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    b_dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    lo = 0
    hi = L
    if CAUSAL:
        lo = (n0 // BLOCK_M) * BLOCK_M
    elif HAS_WINDOW:
        lo = (tl.maximum(0, n0 - WINDOW + 1) // BLOCK_M) * BLOCK_M
    if HAS_WINDOW:
        hi = tl.minimum(L, n0 + BLOCK_N + WINDOW - 1)
    for i_g in range(G):
        i_h = i_hk * G + i_g
        for m0 in range(lo, hi, BLOCK_M):
            o_m, m_m, o_q, m_q = _tokens(bos, m0, L, i_h, H, D, BLOCK_M, BLOCK_D)
            b_q, b_do, b_lse, b_delta = _load_q_rows(q, do, lse, delta, o_q, m_q, o_m, m_m, i_h, bos, T)
            b_p = _bwd_probs(b_q, b_k, b_lse, o_m, o_n, L, qk_scale, WINDOW, CAUSAL, HAS_WINDOW, PRECISION)
            b_dv += tl.dot(tl.trans(b_p.to(b_do.dtype)), b_do, input_precision=PRECISION)
            b_ds = _bwd_dscores(b_p, b_do, b_v, b_delta, PRECISION)
            b_dk += tl.dot(tl.trans(b_ds.to(b_q.dtype)), b_q, input_precision=PRECISION)
    tl.store(dk + o_kv, (b_dk * sm_scale).to(dk.dtype.element_ty), mask=m_kv)
    tl.store(dv + o_kv, b_dv.to(dv.dtype.element_ty), mask=m_kv)


# CUDA launch configs per BLOCK_D (the head dim d rounded up to a power of two >= 16; d <= 256), forward and
# backward: tile sizes, warps and pipeline stages. tests/kernels/test_aot_compile.py compiles every entry for
# sm_80 and sm_90 and checks its shared memory against the chip. The backward's dk/dv kernel holds two fp32
# [BLOCK_N, BLOCK_D] accumulators, so its tiles shrink with d.
CUDA_FWD = {
    16: dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3),
    32: dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3),
    64: dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3),
    128: dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2),
    256: dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=1),
}
CUDA_BWD = {
    16: dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2),
    32: dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2),
    64: dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2),
    128: dict(BLOCK_M=32, BLOCK_N=64, num_warps=8, num_stages=1),
    256: dict(BLOCK_M=32, BLOCK_N=32, num_warps=8, num_stages=1),
}
CUDA_PREPROCESS = dict(BLOCK_T=64, num_warps=4, num_stages=1)
MAX_HEAD_DIM = max(CUDA_FWD)
# The interpreter (CPU tensors): few, large programs.
_INTERPRET = dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=1)
_INTERPRET_PREPROCESS = dict(BLOCK_T=32, num_warps=4, num_stages=1)


def block_d(d: int) -> int:
    """The head-dim tile: d rounded up to a power of two, at least 16 (tl.dot's smallest K); lanes >= d are masked."""
    return max(16, triton.next_power_of_2(d))


def _config(q: torch.Tensor, table: dict) -> dict:
    """Tile sizes and launch options for this device and head dim (``table``: CUDA_FWD or CUDA_BWD)."""
    bd = block_d(q.shape[-1])
    return dict(table[bd] if q.is_cuda else _INTERPRET, BLOCK_D=bd)


def _precision(q: torch.Tensor) -> str:
    return "ieee" if q.dtype == torch.float32 else "tf32"


def _common(q, k, cu_seqlens, window, causal):
    T, H, D = q.shape
    return dict(H=H, HKV=k.shape[1], D=D, CAUSAL=bool(causal), HAS_WINDOW=window is not None,
                PRECISION=_precision(q)), (T, cu_seqlens.numel() - 1)


def packed_attention_fwd(q, k, v, cu_seqlens, max_seqlen, causal, softmax_scale, window):
    """Launch the forward kernel: returns o [T, H, d] (dtype of q) and lse [H, T] fp32 (base 2)."""
    consts, (T, B) = _common(q, k, cu_seqlens, window, causal)
    cfg = _config(q, CUDA_FWD)
    o = torch.empty_like(q)
    lse = torch.empty(q.shape[1], T, dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(max_seqlen, cfg["BLOCK_M"]), B, q.shape[1])
    packed_attn_fwd_kernel[grid](
        q, k, v, o, lse, cu_seqlens, softmax_scale * _LOG2E, T, window or 0, **consts, **cfg
    )
    return o, lse


def packed_attention_bwd(do, q, k, v, o, lse, cu_seqlens, max_seqlen, causal, softmax_scale, window):
    """Launch the backward kernels: returns dq, dk, dv (dtypes of q, k, v)."""
    consts, (T, B) = _common(q, k, cu_seqlens, window, causal)
    H, D = q.shape[1], q.shape[2]
    cfg = _config(q, CUDA_BWD)
    delta = torch.empty(H, T, dtype=torch.float32, device=q.device)
    pre = CUDA_PREPROCESS if q.is_cuda else _INTERPRET_PREPROCESS
    packed_attn_bwd_preprocess_kernel[(triton.cdiv(T, pre["BLOCK_T"]), H)](
        o, do, delta, T, H=H, D=D, BLOCK_D=cfg["BLOCK_D"], **pre
    )
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    scales = (softmax_scale * _LOG2E, softmax_scale, T, window or 0)
    packed_attn_bwd_dq_kernel[(triton.cdiv(max_seqlen, cfg["BLOCK_M"]), B, H)](
        q, k, v, do, lse, delta, dq, cu_seqlens, *scales, **consts, **cfg
    )
    packed_attn_bwd_dkdv_kernel[(triton.cdiv(max_seqlen, cfg["BLOCK_N"]), B, k.shape[1])](
        q, k, v, do, lse, delta, dk, dv, cu_seqlens, *scales, **consts, **cfg
    )
    return dq, dk, dv
