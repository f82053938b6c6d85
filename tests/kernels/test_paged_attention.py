"""Paged decode attention and the KV-cache write: Triton (interpreter on CPU) against gather + reference."""

import pytest
import torch

from vt_core.kernels import (
    packed_attention_reference,
    paged_decode_attention,
    paged_decode_attention_reference,
    write_kv_cache,
    write_kv_cache_reference,
)
from vt_core.kernels.attention import paged_decode_attention_naive, paged_decode_native


def _paged_setup(ctx, H, Hkv, d, page, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    B = len(ctx)
    max_blocks = max(-(-c // page) for c in ctx) + 1
    num_blocks = B * max_blocks + 3
    block_table = torch.randperm(num_blocks, generator=gen)[: B * max_blocks].view(B, max_blocks).to(torch.int32)
    k_cache = torch.randn(num_blocks, page, Hkv, d, generator=gen).to(dtype)
    v_cache = torch.randn(num_blocks, page, Hkv, d, generator=gen).to(dtype)
    q = torch.randn(B, H, d, generator=gen).to(dtype)
    return q, k_cache, v_cache, block_table, torch.tensor(ctx, dtype=torch.int32)


@pytest.mark.parametrize(
    "ctx,H,Hkv,d,page,num_splits",
    [
        ([1, 17, 64, 100, 33], 8, 2, 32, 16, None),  # GQA 4, lengths across page boundaries
        ([5, 70, 0, 129], 8, 1, 16, 8, 3),  # GQA 8, an empty sequence, pages smaller than a tile, 3 splits
        ([40, 3], 2, 2, 64, 16, 1),  # GQA 1, d = 64, a single split
        ([1, 17, 64, 100, 33], 4, 2, 12, 16, None),  # d = 12 (the GPU engine test's model) in a 16-wide tile
        ([5, 70, 0, 129], 6, 3, 40, 8, 5),  # d = 40 in a 64-wide tile, 5 splits
    ],
)
def test_paged_decode_triton_matches_gather(monkeypatch, ctx, H, Hkv, d, page, num_splits):
    monkeypatch.setenv("VT_BACKEND", "triton")
    q, kc, vc, bt, cl = _paged_setup(ctx, H, Hkv, d, page)
    out = paged_decode_attention(q, kc, vc, bt, cl, num_splits=num_splits)
    ref = paged_decode_attention_reference(q, kc, vc, bt, cl)
    oracle = paged_decode_attention_naive(q, kc, vc, bt, cl)
    torch.testing.assert_close(ref.double(), oracle, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.double(), oracle, atol=1e-5, rtol=1e-5)


def test_paged_decode_triton_fp16_and_scale(monkeypatch):
    monkeypatch.setenv("VT_BACKEND", "triton")
    q, kc, vc, bt, cl = _paged_setup([50, 7, 90], 4, 1, 32, 16, dtype=torch.float16, seed=1)
    out = paged_decode_attention(q, kc, vc, bt, cl, softmax_scale=0.25)
    ref16 = paged_decode_attention_reference(q, kc, vc, bt, cl, softmax_scale=0.25)
    ref64 = paged_decode_attention_reference(q.double(), kc.double(), vc.double(), bt, cl, softmax_scale=0.25)
    assert (out.double() - ref64).abs().max() <= 2 * (ref16.double() - ref64).abs().max()


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("d", [16, 12])
def test_write_then_decode_equals_packed_attention(monkeypatch, backend, d):
    """Prefill K/V through write_kv_cache into scattered blocks; decoding each sequence's last token then
    equals the last row of causal packed attention over the same tokens."""
    monkeypatch.setenv("VT_BACKEND", backend)
    lens, H, Hkv, page = [9, 30, 1], 4, 2, 8
    T = sum(lens)
    q = torch.randn(T, H, d)
    k = torch.randn(T, Hkv, d)
    v = torch.randn(T, Hkv, d)
    cu = torch.tensor([0, 9, 39, 40], dtype=torch.int32)
    max_blocks = 4
    block_table = torch.randperm(16)[: 3 * max_blocks].view(3, max_blocks).to(torch.int32)
    slots = torch.cat([
        torch.tensor([int(block_table[b, t // page]) * page + t % page for t in range(n)]) for b, n in enumerate(lens)
    ])
    k_cache = torch.zeros(16, page, Hkv, d)
    v_cache = torch.zeros(16, page, Hkv, d)
    write_kv_cache(k, v, k_cache, v_cache, slots.to(torch.int32))
    last = cu[1:].long() - 1
    out = paged_decode_attention(q[last], k_cache, v_cache, block_table, torch.tensor(lens, dtype=torch.int32))
    ref = packed_attention_reference(q, k, v, cu)[last]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "ctx,H,Hkv,d,page",
    [
        ([1, 17, 64, 100, 33, 0], 4, 2, 32, 16),  # AVX2 path, d = 32 specialised, an empty sequence
        ([300, 5, 129], 8, 2, 64, 64),  # d = 64, GQA 4 (two register tiles of 3 + 1 query heads)
        ([70, 1], 12, 2, 128, 16),  # d = 128 (4 column tiles), GQA 6
        ([40, 9, 23], 6, 3, 48, 8),  # AVX2 path with d unspecialised
        ([40, 9, 23], 4, 4, 20, 5),  # d not a multiple of 8 (portable loops), pages not a multiple of 8
        ([33, 2], 6, 2, 32, 12),  # AVX2 path, pages not a multiple of 8
    ],
)
@pytest.mark.parametrize("threads", [1, 3])
def test_paged_decode_native_matches_gather(monkeypatch, ctx, H, Hkv, d, page, threads):
    """The C++ CPU kernel (VT_BACKEND=cpp) against the per-sequence float64 oracle; with
    k_new / v_new it reads each sequence's last position from them instead of the cache."""
    q, kc, vc, bt, cl = _paged_setup(ctx, H, Hkv, d, page, seed=len(ctx) + d)
    oracle = paged_decode_attention_naive(q, kc, vc, bt, cl)
    monkeypatch.setenv("VT_BACKEND", "cpp")
    torch.testing.assert_close(paged_decode_attention(q, kc, vc, bt, cl).double(), oracle, atol=2e-6, rtol=1e-5)
    out = paged_decode_native(q, kc, vc, bt, cl, d**-0.5, threads=threads)
    torch.testing.assert_close(out.double(), oracle, atol=2e-6, rtol=1e-5)
    # The last position from k_new / v_new: poison its cache slot; the result must not change.
    last = [(int(bt[b, (n - 1) // page]), (n - 1) % page) for b, n in enumerate(ctx)]
    k_new = torch.stack([kc[blk, off] if n else torch.zeros(Hkv, d) for (blk, off), n in zip(last, ctx)])
    v_new = torch.stack([vc[blk, off] if n else torch.zeros(Hkv, d) for (blk, off), n in zip(last, ctx)])
    for (blk, off), n in zip(last, ctx):
        if n:
            kc[blk, off], vc[blk, off] = float("nan"), float("nan")
    fresh = paged_decode_native(q, kc, vc, bt, cl, d**-0.5, threads=threads, k_new=k_new, v_new=v_new)
    torch.testing.assert_close(fresh.double(), oracle, atol=2e-6, rtol=1e-5)


def test_paged_decode_native_prefill_rows_equal_packed_attention():
    """The engine's CPU prefill: every prompt token is a query row over its own prefix (rows of one prompt
    share its block table) and equals causal packed attention."""
    lens, H, Hkv, d, page = [9, 70, 1], 4, 2, 32, 16
    T = sum(lens)
    q, k, v = torch.randn(T, H, d), torch.randn(T, Hkv, d), torch.randn(T, Hkv, d)
    cu = torch.tensor([0, 9, 79, 80], dtype=torch.int32)
    tables = torch.randperm(16)[:15].view(3, 5).to(torch.int32)
    pos = torch.cat([torch.arange(n) for n in lens])
    seq = torch.repeat_interleave(torch.arange(3), torch.tensor(lens))
    slots = tables[seq, pos // page].long() * page + pos % page
    k_cache, v_cache = torch.zeros(16, page, Hkv, d), torch.zeros(16, page, Hkv, d)
    k_cache.view(-1, Hkv, d)[slots], v_cache.view(-1, Hkv, d)[slots] = k, v
    out = paged_decode_native(q, k_cache, v_cache, tables[seq], (pos + 1).to(torch.int32), d**-0.5)
    torch.testing.assert_close(out, packed_attention_reference(q, k, v, cu), atol=2e-6, rtol=1e-5)


def test_cpp_backend_and_its_deprecated_cuda_spelling(monkeypatch, caplog):
    """VT_BACKEND=cpp runs paged_decode_native on CPU tensors; VT_BACKEND=cuda on CPU tensors still does, with a
    one-time deprecation note; ops without a C++ twin under cpp use the auto choice (torch on CPU)."""
    q, kc, vc, bt, cl = _paged_setup([4, 40, 9], 4, 2, 16, 8)
    native = paged_decode_native(q, kc, vc, bt, cl, 0.25)
    monkeypatch.setenv("VT_BACKEND", "cpp")
    assert torch.equal(paged_decode_attention(q, kc, vc, bt, cl, softmax_scale=0.25), native)
    k = torch.randn(3, 2, 16)
    copies = [kc.clone(), vc.clone()]
    write_kv_cache(k, k, *copies, torch.tensor([0, 9, -1]))  # no twin: the torch path
    assert torch.equal(copies[0][1, 1], k[1]) and torch.equal(copies[1][0, 0], k[0])
    monkeypatch.setenv("VT_BACKEND", "cuda")
    with caplog.at_level("WARNING", logger="vt_core.kernels"):
        for _ in range(2):
            assert torch.equal(paged_decode_attention(q, kc, vc, bt, cl, softmax_scale=0.25), native)
    notes = [r for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(notes) <= 1 and all("VT_BACKEND=cpp" in r.getMessage() for r in notes)
    monkeypatch.setenv("VT_BACKEND", "torch")
    torch.testing.assert_close(paged_decode_attention(q, kc, vc, bt, cl, softmax_scale=0.25), native, atol=2e-6,
                               rtol=1e-5)


def test_paged_decode_native_errors(monkeypatch):
    q, kc, vc, bt, cl = _paged_setup([4, 40], 4, 2, 16, 8)
    monkeypatch.setenv("VT_BACKEND", "cpp")
    with pytest.raises(ValueError, match="fp32"):
        paged_decode_attention(q.half(), kc.half(), vc.half(), bt, cl)
    bad = bt.clone()
    bad[1, 2] = 999
    with pytest.raises(ValueError, match=r"block_table\[1, 2\] = 999 is not a cache block"):
        paged_decode_native(q, kc, vc, bad, cl, 0.25)
    with pytest.raises(ValueError, match=r"context_lens\[1\] = 400 does not fit its block table"):
        paged_decode_native(q, kc, vc, bt, torch.tensor([4, 400], dtype=torch.int32), 0.25)


def test_write_kv_cache_triton_matches_reference(monkeypatch):
    monkeypatch.setenv("VT_BACKEND", "triton")
    k = torch.randn(6, 3, 16)
    v = torch.randn(6, 3, 16)
    slots = torch.tensor([5, -1, 100, 17, 159, 0])
    caches = [torch.randn(10, 16, 3, 16).half() for _ in range(2)]
    copies = [c.clone() for c in caches]
    write_kv_cache(k, v, *caches, slots)
    write_kv_cache_reference(k, v, *copies, slots)
    assert torch.equal(caches[0], copies[0]) and torch.equal(caches[1], copies[1])
    flat = caches[0].view(-1, 3, 16)
    assert torch.equal(flat[100], k[2].half()) and torch.equal(flat[0], k[5].half())


def test_paged_argument_errors():
    q, kc, vc, bt, cl = _paged_setup([4, 5], 4, 2, 16, 8)
    with pytest.raises(ValueError, match="block_table"):
        paged_decode_attention(q, kc, vc, bt[:1], cl)
    with pytest.raises(ValueError, match="context_lens"):
        paged_decode_attention(q, kc, vc, bt, cl[:1])
    with pytest.raises(ValueError, match="H a multiple of Hkv"):
        paged_decode_attention(q[:, :3], kc, vc, bt, cl)
    with pytest.raises(ValueError, match="slot_mapping"):
        write_kv_cache(torch.randn(3, 2, 16), torch.randn(3, 2, 16), kc, vc, torch.tensor([0, 1]))


def test_paged_triton_head_dim_limit(monkeypatch):
    monkeypatch.setenv("VT_BACKEND", "triton")
    q, kc, vc, bt, cl = _paged_setup([4, 5], 2, 1, 264, 8)
    with pytest.raises(ValueError, match="d <= 256"):
        paged_decode_attention(q, kc, vc, bt, cl)


@pytest.mark.gpu
def test_paged_decode_bf16_on_gpu(monkeypatch):
    monkeypatch.setenv("VT_BACKEND", "triton")
    q, kc, vc, bt, cl = _paged_setup([1, 4096, 777, 2049] * 4, 16, 2, 128, 16, dtype=torch.bfloat16)
    q, kc, vc, bt, cl = (x.cuda() for x in (q, kc, vc, bt, cl))
    out = paged_decode_attention(q, kc, vc, bt, cl)
    ref_bf16 = paged_decode_attention_reference(q, kc, vc, bt, cl)
    ref64 = paged_decode_attention_reference(q.double(), kc.double(), vc.double(), bt, cl)
    assert (out.double() - ref64).abs().max() <= 2 * (ref_bf16.double() - ref64).abs().max()
    k_new = torch.randn(16, 2, 128, device="cuda", dtype=torch.bfloat16)
    slots = torch.randperm(kc.shape[0] * 16, device="cuda")[:16]
    caches, copies = (kc.clone(), vc.clone()), (kc.clone(), vc.clone())
    write_kv_cache(k_new, k_new, *caches, slots)
    write_kv_cache_reference(k_new, k_new, *copies, slots)
    assert torch.equal(caches[0], copies[0]) and torch.equal(caches[1], copies[1])
