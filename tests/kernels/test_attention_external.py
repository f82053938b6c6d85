"""VT_ATTN_BACKEND: dispatch to flash-attn / xformers with vt_core's semantics.

Neither library runs on CPU, so the glue is checked against stand-ins that implement each library's
documented contract (flash-attn: ``window_size=(left, right)`` lets query i see keys i-left..i+right;
xformers: block-diagonal masks from sequence lengths on [1, T, H, d] inputs); the real libraries are
compared with vt_core's kernels on a GPU (``gpu`` marker).
"""

import sys
import types

import pytest
import torch

from vt_core.kernels import packed_attention, packed_attention_reference

LENS = [5, 1, 9, 4]


def _inputs(h=4, hkv=2, d=16):
    cu = torch.tensor([0] + LENS).cumsum(0).to(torch.int32)
    T = int(cu[-1])
    return (torch.randn(T, h, d, dtype=torch.float64), torch.randn(T, hkv, d, dtype=torch.float64),
            torch.randn(T, hkv, d, dtype=torch.float64), cu)


def _dense(q, k, v, allowed, scale):
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = torch.einsum("ihd,jhd->hij", q, k) * scale
    s = s.masked_fill(~allowed[None], float("-inf"))
    return torch.einsum("hij,jhd->ihd", torch.softmax(s, -1), v)


def _fake_flash_attn(calls):
    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale,
                               causal, window_size):
        calls.append({"cu_dtype": cu_seqlens_q.dtype, "max": max_seqlen_q, "window": window_size, "causal": causal})
        lens = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).long()
        doc = torch.repeat_interleave(torch.arange(len(cu_seqlens_q) - 1), lens)
        i, j = torch.arange(q.shape[0])[:, None], torch.arange(q.shape[0])[None, :]
        allowed = doc[:, None] == doc[None, :]
        left, right = window_size
        if causal:
            right = 0
        if left >= 0:
            allowed &= j >= i - left
        if right >= 0:
            allowed &= j <= i + right
        return _dense(q, k, v, allowed, softmax_scale)

    return types.SimpleNamespace(flash_attn_varlen_func=flash_attn_varlen_func)


@pytest.mark.parametrize("causal, window", [(True, None), (True, 3), (False, None), (False, 2)])
def test_flash_attn_glue_keeps_vt_semantics(monkeypatch, causal, window):
    calls = []
    monkeypatch.setitem(sys.modules, "flash_attn", _fake_flash_attn(calls))
    monkeypatch.setenv("VT_ATTN_BACKEND", "flash_attn")
    q, k, v, cu = _inputs()
    out = packed_attention(q, k, v, cu, max(LENS), causal=causal, window=window)
    want = packed_attention_reference(q, k, v, cu, causal=causal, window=window)
    torch.testing.assert_close(out, want)
    assert calls[0]["cu_dtype"] == torch.int32 and calls[0]["max"] == max(LENS)


def _fake_xformers():
    class _Mask:
        causal = False

        def __init__(self, lens):
            self.lens = lens

        @classmethod
        def from_seqlens(cls, lens):
            return cls(list(lens))

    class BlockDiagonalMask(_Mask):
        pass

    class BlockDiagonalCausalMask(_Mask):
        causal = True

    def memory_efficient_attention(q, k, v, attn_bias, scale):
        assert q.dim() == 4 and q.shape[0] == 1 and k.shape[2] == q.shape[2]  # [1, T, H, d], heads expanded
        doc = torch.repeat_interleave(torch.arange(len(attn_bias.lens)), torch.tensor(attn_bias.lens))
        allowed = doc[:, None] == doc[None, :]
        if attn_bias.causal:
            allowed &= torch.ones_like(allowed).tril()
        return _dense(q[0], k[0], v[0], allowed, scale)[None]

    bias = types.SimpleNamespace(BlockDiagonalMask=BlockDiagonalMask, BlockDiagonalCausalMask=BlockDiagonalCausalMask)
    ops = types.ModuleType("xformers.ops")
    ops.fmha = types.SimpleNamespace(attn_bias=bias)
    ops.memory_efficient_attention = memory_efficient_attention
    return ops


@pytest.mark.parametrize("causal", [True, False])
def test_xformers_glue_keeps_vt_semantics(monkeypatch, causal):
    monkeypatch.setitem(sys.modules, "xformers", types.ModuleType("xformers"))
    monkeypatch.setitem(sys.modules, "xformers.ops", _fake_xformers())
    monkeypatch.setenv("VT_ATTN_BACKEND", "xformers")
    q, k, v, cu = _inputs()
    out = packed_attention(q, k, v, cu, max(LENS), causal=causal)
    torch.testing.assert_close(out, packed_attention_reference(q, k, v, cu, causal=causal))
    with pytest.raises(ValueError, match="sliding window"):
        packed_attention(q, k, v, cu, max(LENS), window=3)


def test_missing_or_unknown_backend_is_a_clear_error(monkeypatch):
    q, k, v, cu = _inputs()
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import fails as if not installed
    monkeypatch.setenv("VT_ATTN_BACKEND", "flash_attn")
    with pytest.raises(RuntimeError, match="VT_ATTN_BACKEND=flash_attn but 'flash_attn' cannot be imported"):
        packed_attention(q, k, v, cu, max(LENS))
    monkeypatch.setenv("VT_ATTN_BACKEND", "cudnn")
    with pytest.raises(ValueError, match="VT_ATTN_BACKEND='cudnn' is not one of vt, flash_attn, xformers"):
        packed_attention(q, k, v, cu, max(LENS))


@pytest.mark.gpu
@pytest.mark.parametrize("backend, module", [("flash_attn", "flash_attn"), ("xformers", "xformers.ops")])
def test_real_library_matches_vt_on_gpu(monkeypatch, backend, module):
    pytest.importorskip(module)  # optional libraries: compared only where the GPU machine has them
    cu = torch.tensor([0, 300, 301, 1000], dtype=torch.int32, device="cuda")
    q = torch.randn(1000, 8, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1000, 2, 64, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1000, 2, 64, device="cuda", dtype=torch.bfloat16)
    want = packed_attention(q, k, v, cu, 699)
    monkeypatch.setenv("VT_ATTN_BACKEND", backend)
    got = packed_attention(q, k, v, cu, 699)
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
