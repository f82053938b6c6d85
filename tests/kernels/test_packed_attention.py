"""packed_attention: Triton kernels (interpreter on CPU) against the per-document SDPA reference in fp64."""

import math

import pytest
import torch
import torch.nn.functional as F

from vt_core.kernels import packed_attention, packed_attention_reference
from vt_core.kernels.attention import packed_attention_naive


def _cu(lens):
    return torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)


def _inputs(lens, H, Hkv, d, dtype):
    T = sum(lens)
    return [torch.randn(T, h, d, dtype=dtype).requires_grad_() for h in (H, Hkv, Hkv)]


def _check(lens, H, Hkv, d, causal=True, window=None, dtype=torch.float32, scale=None, tol=None):
    cu = _cu(lens)
    q, k, v = _inputs(lens, H, Hkv, d, dtype)
    o = packed_attention(q, k, v, cu, max(lens), causal=causal, softmax_scale=scale, window=window)
    do = torch.randn_like(o)
    grads = torch.autograd.grad(o, (q, k, v), do)
    q64, k64, v64 = [x.detach().double().requires_grad_() for x in (q, k, v)]
    o64 = packed_attention_reference(q64, k64, v64, cu, causal=causal, softmax_scale=scale, window=window)
    grads64 = torch.autograd.grad(o64, (q64, k64, v64), do.double())
    if dtype == torch.float32:
        for ours, ref in zip((o,) + grads, (o64,) + grads64):
            torch.testing.assert_close(ours.double(), ref, atol=2e-5, rtol=1e-4)
        return
    # Low precision: at most 2x the error of the torch reference run in the same dtype.
    q16, k16, v16 = [x.detach().requires_grad_() for x in (q, k, v)]
    o16 = packed_attention_reference(q16, k16, v16, cu, causal=causal, softmax_scale=scale, window=window)
    grads16 = torch.autograd.grad(o16, (q16, k16, v16), do)
    for ours, theirs, ref in zip((o,) + grads, (o16,) + grads16, (o64,) + grads64):
        err = (ours.double() - ref).abs().max().item()
        torch_err = (theirs.double() - ref).abs().max().item()
        assert err <= 2 * torch_err, (err, torch_err)


@pytest.mark.parametrize(
    "lens,H,Hkv,d,causal,window",
    [
        ([1, 37, 5, 70], 4, 1, 16, True, None),  # GQA 4, length-1 document, lengths off the block size
        ([300, 1, 60], 2, 2, 16, True, None),  # long document (many tiles), GQA 1
        ([23, 0, 64, 1, 9], 8, 1, 32, True, 7),  # GQA 8, sliding window, an empty document
        ([1, 37, 5, 70], 4, 4, 32, False, None),  # non-causal
        ([41, 66, 2], 4, 2, 16, False, 9),  # non-causal with a symmetric window
        ([45, 20], 2, 1, 64, True, None),  # d = 64
        ([1, 37, 5, 70], 4, 2, 12, True, None),  # d = 12 (the GPU engine test's model): a 16-wide tile, 4 lanes masked
        ([41, 66, 2], 6, 2, 40, False, 9),  # d = 40 in a 64-wide tile, non-causal with a window
        ([23, 0, 64, 1, 9], 2, 1, 72, True, 7),  # d = 72 in a 128-wide tile, sliding window
    ],
)
def test_triton_matches_reference_fp32(monkeypatch, lens, H, Hkv, d, causal, window):
    monkeypatch.setenv("VT_BACKEND", "triton")
    _check(lens, H, Hkv, d, causal=causal, window=window)


@pytest.mark.parametrize("d", [48, 12])
def test_triton_fp16_odd_head_dim(monkeypatch, d):
    monkeypatch.setenv("VT_BACKEND", "triton")
    _check([3, 50, 12], 4, 2, d, dtype=torch.float16, scale=0.3)


def test_triton_random_lengths_and_scale(monkeypatch):
    monkeypatch.setenv("VT_BACKEND", "triton")
    gen = torch.Generator().manual_seed(3)
    lens = torch.randint(1, 120, (4,), generator=gen).tolist()
    _check(lens, 2, 1, 16, causal=True, window=33, scale=0.17)


def test_reference_matches_naive_loop():
    lens = [5, 1, 17, 9]
    cu = _cu(lens)
    q, k, v = [x.detach().double() for x in _inputs(lens, 4, 2, 8, torch.float64)]
    for causal, window in [(True, None), (True, 3), (False, None), (False, 4)]:
        ref = packed_attention_reference(q, k, v, cu, causal=causal, window=window)
        naive = packed_attention_naive(q, k, v, cu, causal, 1 / math.sqrt(8), window)
        torch.testing.assert_close(ref, naive)


def test_default_backend_on_cpu_is_the_reference(monkeypatch):
    monkeypatch.delenv("VT_BACKEND", raising=False)
    lens = [7, 12]
    q, k, v = [x.detach() for x in _inputs(lens, 4, 2, 16, torch.float32)]
    out = packed_attention(q, k, v, _cu(lens), 12)
    assert torch.equal(out, packed_attention_reference(q, k, v, _cu(lens)))


def test_documents_do_not_interact(monkeypatch):
    """Changing one document's keys leaves every other document's output (Triton path) bit-identical."""
    monkeypatch.setenv("VT_BACKEND", "triton")
    lens = [33, 40]
    q, k, v = [x.detach() for x in _inputs(lens, 2, 1, 16, torch.float32)]
    cu = _cu(lens)
    out = packed_attention(q, k, v, cu, 40)
    k2 = k.clone()
    k2[33:] = torch.randn_like(k2[33:])
    out2 = packed_attention(q, k2, v, cu, 40)
    assert torch.equal(out[:33], out2[:33])
    assert not torch.equal(out[33:], out2[33:])
    single = F.scaled_dot_product_attention(q[:33].transpose(0, 1), k[:33].transpose(0, 1).expand(2, -1, -1),
                                            v[:33].transpose(0, 1).expand(2, -1, -1), is_causal=True)
    torch.testing.assert_close(out[:33], single.transpose(0, 1), atol=1e-5, rtol=1e-5)


def test_argument_errors(monkeypatch):
    q = torch.randn(10, 4, 16)
    k = torch.randn(10, 3, 16)
    cu = _cu([10])
    with pytest.raises(ValueError, match="multiple of kv heads"):
        packed_attention(q, k, k, cu, 10)
    with pytest.raises(ValueError, match=r"\[T, H, d\]"):
        packed_attention(q[0], k, k, cu, 10)
    with pytest.raises(ValueError, match="cu_seqlens"):
        packed_attention(q, q, q, cu[:1], 10)
    with pytest.raises(ValueError, match="window"):
        packed_attention(q, q, q, cu, 10, window=0)
    monkeypatch.setenv("VT_BACKEND", "triton")
    with pytest.raises(ValueError, match="d <= 256"):
        packed_attention(torch.randn(10, 2, 264), torch.randn(10, 2, 264), torch.randn(10, 2, 264), cu, 10)


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128, 256])
def test_triton_bf16_on_gpu(monkeypatch, d):
    """Real shapes in bf16 on CUDA: Qwen2.5-3B heads (16 q / 2 kv), a long document among short ones, window."""
    monkeypatch.setenv("VT_BACKEND", "triton")
    torch.manual_seed(0)
    lens = [1, 4000, 77, 1023, 300]
    cu = _cu(lens).cuda()
    for window in (None, 513):
        q, k, v = [x.detach().cuda().requires_grad_() for x in _inputs(lens, 16, 2, d, torch.bfloat16)]
        o = packed_attention(q, k, v, cu, max(lens), window=window)
        do = torch.randn_like(o)
        grads = torch.autograd.grad(o, (q, k, v), do)
        q64, k64, v64 = [x.detach().double().requires_grad_() for x in (q, k, v)]
        o64 = packed_attention_reference(q64, k64, v64, cu, window=window)
        grads64 = torch.autograd.grad(o64, (q64, k64, v64), do.double())
        qb, kb, vb = [x.detach().requires_grad_() for x in (q, k, v)]
        ob = packed_attention_reference(qb, kb, vb, cu, window=window)
        gradsb = torch.autograd.grad(ob, (qb, kb, vb), do)
        for ours, theirs, ref in zip((o,) + grads, (ob,) + gradsb, (o64,) + grads64):
            err = (ours.double() - ref).abs().max().item()
            assert err <= 2 * (theirs.double() - ref).abs().max().item(), err


@pytest.mark.gpu
def test_triton_one_32k_document_on_gpu(monkeypatch):
    """One 32K-token document in bf16: within 2x of torch's own bf16 error against an fp32 reference."""
    monkeypatch.setenv("VT_BACKEND", "triton")
    torch.manual_seed(0)
    lens = [32768]
    cu = _cu(lens).cuda()
    q, k, v = [x.detach().cuda().requires_grad_() for x in _inputs(lens, 16, 2, 128, torch.bfloat16)]
    o = packed_attention(q, k, v, cu, 32768)
    do = torch.randn_like(o)
    grads = torch.autograd.grad(o, (q, k, v), do)
    q32, k32, v32 = [x.detach().float().requires_grad_() for x in (q, k, v)]
    o32 = packed_attention_reference(q32, k32, v32, cu)
    grads32 = torch.autograd.grad(o32, (q32, k32, v32), do.float())
    qb, kb, vb = [x.detach().requires_grad_() for x in (q, k, v)]
    ob = packed_attention_reference(qb, kb, vb, cu)
    gradsb = torch.autograd.grad(ob, (qb, kb, vb), do)
    for ours, theirs, ref in zip((o,) + grads, (ob,) + gradsb, (o32,) + grads32):
        assert (ours.float() - ref).abs().max() <= 2 * (theirs.float() - ref).abs().max()
