"""Paged decode attention, Triton: the split-KV decode and merge kernels, the KV-cache write kernel, their
launchers (``paged_decode_fwd``, ``write_kv_cache_fwd``) and CUDA launch tables.

Split-KV "flash decoding": grid (sequence, kv head, split); each program takes the G = H/Hkv query heads of its
kv group over one slice of the context, gathering keys through the block table, and writes an unnormalised
partial (acc, running max, sum) in fp32; a second kernel merges the splits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..packed.fused import block_d, load_kv, row_offsets, softmax_step

_LOG2E = 1.4426950408889634
_NEG = tl.constexpr(-1.0e30)  # a plain float global is a NameError inside @triton.jit on real Triton
# CUDA launch options (tests/kernels/test_aot_compile.py compiles each kernel with them for sm_80 and sm_90);
# the split kernel's head-dim tile is block_d(d) and its query-group tile max(16, next_power_of_2(H / Hkv)).
CUDA_SPLIT = dict(BLOCK_N=64, num_warps=4, num_stages=3)
CUDA_MERGE = dict(num_warps=4, num_stages=1)
CUDA_WRITE = dict(num_warps=4, num_stages=1)
MAX_SPLITS = 64
_INTERPRET_SPLIT = dict(BLOCK_N=16, num_warps=4, num_stages=1)


@triton.jit
def paged_decode_split_kernel(
    q, k_cache, v_cache, block_table, context_lens, part_o, part_m, part_l, qk_scale, stride_bt, SPLIT_LEN,
    NUM_SPLITS, H: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_G: tl.constexpr,
    BLOCK_N: tl.constexpr, PAGE: tl.constexpr, PRECISION: tl.constexpr,
):
    i_b, i_hk, i_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    G: tl.constexpr = H // HKV
    ctx = tl.load(context_lens + i_b)
    start = i_s * SPLIT_LEN
    end = tl.minimum(ctx, start + SPLIT_LEN)
    o_g = tl.arange(0, BLOCK_G)
    o_d = tl.arange(0, BLOCK_D)
    m_g = o_g < G
    m_d = o_d < D
    o_h = (i_b.to(tl.int64) * H + i_hk * G + o_g)
    b_q = tl.load(q + o_h[:, None] * D + o_d[None, :], mask=m_g[:, None] & m_d[None, :], other=0.0)
    b_m = tl.full([BLOCK_G], _NEG, dtype=tl.float32)
    b_l = tl.zeros([BLOCK_G], dtype=tl.float32)
    b_acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    for n0 in range(start, end, BLOCK_N):
        o_n = n0 + tl.arange(0, BLOCK_N)
        m_n = o_n < end
        b_blk = tl.load(block_table + i_b.to(tl.int64) * stride_bt + o_n // PAGE, mask=m_n, other=0).to(tl.int64)
        o_slot = b_blk * PAGE + o_n % PAGE
        b_k, b_v = load_kv(k_cache, v_cache, row_offsets(o_slot, i_hk, HKV, D, o_d), m_n[:, None] & m_d[None, :])
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION) * qk_scale
        b_s = tl.where(m_n[None, :], b_s, float("-inf"))
        b_m, b_l, b_acc = softmax_step(b_s, b_v, b_m, b_l, b_acc, PRECISION)
    o_part = o_h * NUM_SPLITS + i_s
    tl.store(part_o + o_part[:, None] * D + o_d[None, :], b_acc, mask=m_g[:, None] & m_d[None, :])
    tl.store(part_m + o_part, b_m, mask=m_g)
    tl.store(part_l + o_part, b_l, mask=m_g)


@triton.jit
def paged_decode_merge_kernel(part_o, part_m, part_l, o, NUM_SPLITS, H: tl.constexpr, D: tl.constexpr,
                              BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
    i_b, i_h = tl.program_id(0), tl.program_id(1)
    o_bh = i_b.to(tl.int64) * H + i_h
    o_s = tl.arange(0, BLOCK_S)
    o_d = tl.arange(0, BLOCK_D)
    m_s = o_s < NUM_SPLITS
    m_d = o_d < D
    b_m = tl.load(part_m + o_bh * NUM_SPLITS + o_s, mask=m_s, other=_NEG)
    b_l = tl.load(part_l + o_bh * NUM_SPLITS + o_s, mask=m_s, other=0.0)
    b_acc = tl.load(part_o + (o_bh * NUM_SPLITS + o_s)[:, None] * D + o_d[None, :], mask=m_s[:, None] & m_d[None, :],
                    other=0.0)
    b_w = tl.exp2(b_m - tl.max(b_m, 0))
    b_w = tl.where(b_l > 0, b_w, 0.0)
    b_sum = tl.sum(b_w * b_l, 0)
    b_sum = tl.where(b_sum > 0, b_sum, 1.0)
    b_o = tl.sum(b_acc * b_w[:, None], 0) / b_sum
    tl.store(o + o_bh * D + o_d, b_o.to(o.dtype.element_ty), mask=m_d)


@triton.jit
def write_kv_cache_kernel(k, v, k_cache, v_cache, slot_mapping, HD: tl.constexpr, BLOCK: tl.constexpr):
    i_t = tl.program_id(0)
    slot = tl.load(slot_mapping + i_t).to(tl.int64)
    if slot < 0:
        return
    o_x = tl.arange(0, BLOCK)
    m_x = o_x < HD
    b_k = tl.load(k + i_t.to(tl.int64) * HD + o_x, mask=m_x)
    b_v = tl.load(v + i_t.to(tl.int64) * HD + o_x, mask=m_x)
    tl.store(k_cache + slot * HD + o_x, b_k.to(k_cache.dtype.element_ty), mask=m_x)
    tl.store(v_cache + slot * HD + o_x, b_v.to(v_cache.dtype.element_ty), mask=m_x)


def _num_splits(q: torch.Tensor, max_context: int, block_n: int, hkv: int) -> int:
    """Context splits per (sequence, kv head): enough programs to fill the GPU, each at least one tile."""
    tiles = max(1, triton.cdiv(max_context, block_n))
    if q.is_cuda:
        target = 2 * torch.cuda.get_device_properties(q.device).multi_processor_count
    else:
        target = 4
    return max(1, min(tiles, triton.cdiv(target, q.shape[0] * hkv), MAX_SPLITS))


def paged_decode_fwd(q, k_cache, v_cache, block_table, context_lens, softmax_scale, num_splits=None):
    """Launch the split and merge kernels; returns o [B, H, d] in the dtype of q."""
    B, H, D = q.shape
    HKV, page = k_cache.shape[2], k_cache.shape[1]
    cfg = CUDA_SPLIT if q.is_cuda else _INTERPRET_SPLIT
    block_n = cfg["BLOCK_N"]
    max_context = block_table.shape[1] * page
    splits = num_splits or _num_splits(q, max_context, block_n, HKV)
    split_len = triton.cdiv(triton.cdiv(max_context, splits), block_n) * block_n
    bd = block_d(D)
    part_o = torch.empty(B, H, splits, D, dtype=torch.float32, device=q.device)
    part_m = torch.empty(B, H, splits, dtype=torch.float32, device=q.device)
    part_l = torch.empty(B, H, splits, dtype=torch.float32, device=q.device)
    paged_decode_split_kernel[(B, HKV, splits)](
        q, k_cache, v_cache, block_table, context_lens, part_o, part_m, part_l, softmax_scale * _LOG2E,
        block_table.stride(0), split_len, splits, H=H, HKV=HKV, D=D, BLOCK_D=bd,
        BLOCK_G=max(16, triton.next_power_of_2(H // HKV)), PAGE=page,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32", **cfg,
    )
    o = torch.empty_like(q)
    paged_decode_merge_kernel[(B, H)](
        part_o, part_m, part_l, o, splits, H=H, D=D, BLOCK_D=bd, BLOCK_S=max(2, triton.next_power_of_2(splits)),
        **CUDA_MERGE,
    )
    return o


def write_kv_cache_fwd(k, v, k_cache, v_cache, slot_mapping):
    """Launch the cache-write kernel (one program per token; slots < 0 are skipped)."""
    hd = k.shape[1] * k.shape[2]
    if k.shape[0] > 0:
        write_kv_cache_kernel[(k.shape[0],)](
            k.contiguous(), v.contiguous(), k_cache, v_cache, slot_mapping.contiguous(), HD=hd,
            BLOCK=triton.next_power_of_2(hd), **CUDA_WRITE,
        )
