"""Decode attention on a paged KV cache, and the kernel that writes new K/V into the cache.

Cache layout (one layer): k_cache, v_cache [num_blocks, block_size, Hkv, d]. Token t of sequence b lives
in physical block ``block_table[b, t // block_size]`` at offset ``t % block_size``; its flat slot index is
``block * block_size + offset``. Sequence b has ``context_lens[b]`` tokens in the cache (the new token's
K/V included: write it with ``write_kv_cache`` first), and one query token q[b] that attends to all of them.

Triton path (split-KV "flash decoding"): grid (sequence, kv head, split); each program takes the G = H/Hkv
query heads of its kv group over one slice of the context, gathering keys through the block table, and
writes an unnormalised partial (acc, running max, sum) in fp32; a second kernel merges the splits.

C++ CPU path (``paged_decode_cpp``; the ``"cpp"`` backend, i.e. ``VT_BACKEND=cuda`` on CPU tensors, and the
generation engine's CPU path): ``vt_core._C.paged_decode_attention_cpu`` in csrc/decode_attention.cpp, fp32,
one sequence per work item reading its blocks in place (AVX2 where the CPU has it). It can also take the
step's own k/v directly (``k_new`` / ``v_new``) so that attention is a pure function of its inputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .._dispatch import native, resolve_backend
from .varlen import MAX_HEAD_DIM, block_d

AVAILABLE = ("torch", "triton", "cpp")

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
        o_kv = (o_slot * HKV + i_hk)[:, None] * D + o_d[None, :]
        b_k = tl.load(k_cache + o_kv, mask=m_n[:, None] & m_d[None, :], other=0.0)
        b_v = tl.load(v_cache + o_kv, mask=m_n[:, None] & m_d[None, :], other=0.0)
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION) * qk_scale
        b_s = tl.where(m_n[None, :], b_s, float("-inf"))
        b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
        b_alpha = tl.exp2(b_m - b_m_new)
        b_p = tl.exp2(b_s - b_m_new[:, None])
        b_l = b_l * b_alpha + tl.sum(b_p, 1)
        b_acc = b_acc * b_alpha[:, None] + tl.dot(b_p.to(b_v.dtype), b_v, input_precision=PRECISION)
        b_m = b_m_new
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


def paged_decode_cpp(q, k_cache, v_cache, block_table, context_lens, softmax_scale, threads=None, k_new=None,
                     v_new=None):
    """The C++ CPU kernel (``vt_core._C.paged_decode_attention_cpu``): fp32 CPU tensors, contiguous caches;
    shapes are not checked here (callers validate once). Each sequence reads its own blocks, with no gather,
    padding or mask. With ``k_new`` / ``v_new`` [B, Hkv, d] the last position of each sequence
    (``context_lens[b] - 1``) is read from them rather than from the cache, which the caller writes after.
    ``threads`` defaults to ``torch.get_num_threads()``. Returns o [B, H, d]."""
    B, H, D = q.shape
    q = q.contiguous()
    block_table = block_table if block_table.dtype == torch.int32 else block_table.to(torch.int32)
    context_lens = context_lens if context_lens.dtype == torch.int32 else context_lens.to(torch.int32)
    block_table, context_lens = block_table.contiguous(), context_lens.contiguous()
    if k_new is not None:
        k_new, v_new = k_new.contiguous(), v_new.contiguous()
    o = torch.empty_like(q)
    native().paged_decode_attention_cpu(
        q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), 0 if k_new is None else k_new.data_ptr(),
        0 if v_new is None else v_new.data_ptr(), block_table.data_ptr(), context_lens.data_ptr(), o.data_ptr(), B, H,
        k_cache.shape[2], D, k_cache.shape[0], k_cache.shape[1], block_table.shape[1], softmax_scale,
        torch.get_num_threads() if threads is None else threads)
    return o


def paged_decode_attention_reference(q, k_cache, v_cache, block_table, context_lens, softmax_scale=None):
    """Torch reference: gather each sequence's cache through the block table, then masked SDPA (batched).

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


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    context_lens: torch.Tensor,
    softmax_scale: float | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:
    """One decode step of attention against a paged KV cache (no gradient).

    Shapes: q [B, H, d] (the new token of each sequence), k_cache and v_cache [num_blocks, block_size, Hkv, d]
    (H a multiple of Hkv; any d up to 256 on the Triton path), block_table int32 [B, max_blocks] (physical
    block of each logical block; entries past a sequence's last block are ignored but must be valid indices for
    the torch path), context_lens int32 [B] (tokens in the cache per sequence, the new one included).
    Returns o [B, H, d] in q's dtype.
    ``softmax_scale`` defaults to 1/sqrt(d); ``num_splits`` overrides the Triton path's context split count.
    """
    if q.dim() != 3:
        raise ValueError(f"paged_decode_attention: q must be [B, H, d], got {tuple(q.shape)}")
    if k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(f"paged_decode_attention: k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} "
                         "must both be [num_blocks, block_size, Hkv, d]")
    B, H, D = q.shape
    if k_cache.shape[3] != D or H % k_cache.shape[2] != 0:
        raise ValueError(f"paged_decode_attention: cache {tuple(k_cache.shape)} does not fit q {tuple(q.shape)} "
                         "(same d, H a multiple of Hkv)")
    if block_table.dim() != 2 or block_table.shape[0] != B:
        raise ValueError(f"paged_decode_attention: block_table must be [B={B}, max_blocks], got {tuple(block_table.shape)}")
    if context_lens.shape != (B,):
        raise ValueError(f"paged_decode_attention: context_lens must be [B={B}], got {tuple(context_lens.shape)}")
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)
    with torch.no_grad():
        backend = resolve_backend("paged_decode_attention", q, AVAILABLE)
        if backend == "torch":
            return paged_decode_attention_reference(q, k_cache, v_cache, block_table, context_lens, scale)
        if backend == "cpp":
            if q.dtype != torch.float32 or k_cache.dtype != torch.float32 or v_cache.dtype != torch.float32:
                raise ValueError("paged_decode_attention: the C++ CPU kernel takes fp32 q and caches, got "
                                 f"{q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
            if not k_cache.is_contiguous() or not v_cache.is_contiguous():
                raise ValueError("paged_decode_attention: k_cache and v_cache must be contiguous")
            return paged_decode_cpp(q, k_cache, v_cache, block_table, context_lens, scale)
        if D > MAX_HEAD_DIM:
            raise ValueError(f"paged_decode_attention: the Triton path needs d <= {MAX_HEAD_DIM}, got {D}")
        if not k_cache.is_contiguous() or not v_cache.is_contiguous():
            raise ValueError("paged_decode_attention: k_cache and v_cache must be contiguous")
        return paged_decode_fwd(q.contiguous(), k_cache, v_cache, block_table.to(torch.int32),
                                context_lens.to(torch.int32).contiguous(), scale, num_splits)


def write_kv_cache_reference(k, v, k_cache, v_cache, slot_mapping):
    """Torch reference of ``write_kv_cache`` (in place; slots < 0 are skipped)."""
    HKV, D = k_cache.shape[2], k_cache.shape[3]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    k_cache.view(-1, HKV, D).index_copy_(0, slots, k[keep].to(k_cache.dtype))
    v_cache.view(-1, HKV, D).index_copy_(0, slots, v[keep].to(v_cache.dtype))


def write_kv_cache(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write new keys/values into the paged cache, in place.

    Shapes: k, v [N, Hkv, d]; k_cache, v_cache [num_blocks, block_size, Hkv, d] (contiguous); slot_mapping
    int32/int64 [N] with slot = block * block_size + offset, or -1 to skip a token (padding). Values are cast
    to the cache dtype. Slots must be distinct.
    """
    if k.dim() != 3 or v.shape != k.shape:
        raise ValueError(f"write_kv_cache: k {tuple(k.shape)} and v {tuple(v.shape)} must both be [N, Hkv, d]")
    if k_cache.dim() != 4 or v_cache.shape != k_cache.shape or k_cache.shape[2:] != k.shape[1:]:
        raise ValueError(f"write_kv_cache: caches {tuple(k_cache.shape)}, {tuple(v_cache.shape)} must be "
                         f"[num_blocks, block_size, Hkv, d] matching k {tuple(k.shape)}")
    if slot_mapping.shape != (k.shape[0],):
        raise ValueError(f"write_kv_cache: slot_mapping must be [N={k.shape[0]}], got {tuple(slot_mapping.shape)}")
    if not k_cache.is_contiguous() or not v_cache.is_contiguous():
        raise ValueError("write_kv_cache: k_cache and v_cache must be contiguous")
    with torch.no_grad():
        if resolve_backend("write_kv_cache", k) == "torch":
            write_kv_cache_reference(k, v, k_cache, v_cache, slot_mapping)
            return
        hd = k.shape[1] * k.shape[2]
        if k.shape[0] > 0:
            write_kv_cache_kernel[(k.shape[0],)](
                k.contiguous(), v.contiguous(), k_cache, v_cache, slot_mapping.contiguous(), HD=hd,
                BLOCK=triton.next_power_of_2(hd), **CUDA_WRITE,
            )
