"""linear_kl_distill: Triton (interpreter) and torch paths against a float64 naive version that builds the logits."""

import math

import pytest
import torch

from vt_core.kernels import linear_kl_distill
from vt_core.kernels.kl_distill import chunked, function, fused
from vt_core.kernels.kl_distill import linear_kl_distill_naive

T, DS, DT, V = 67, 48, 40, 1031


def make_inputs(dtype, n=T, ds=DS, dt=DT, v=V, masked_frac=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(n, ds, generator=g)
    ws = torch.randn(v, ds, generator=g) * (2.0 / math.sqrt(ds))
    ht = torch.randn(n, dt, generator=g)
    wt = torch.randn(v, dt, generator=g) * (2.5 / math.sqrt(dt))
    mask = torch.rand(n, generator=g) >= masked_frac
    return [x.to(dtype) for x in (hs, ws, ht, wt)] + [mask]


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def run_ours(hs, ws, ht, wt, mask, upstream, **kw):
    hs, ws = hs.clone().requires_grad_(), ws.clone().requires_grad_()
    out = linear_kl_distill(hs, ws, ht, wt, mask, reduction="none", **kw)
    (out * upstream).sum().backward()
    return out.detach(), hs.grad, ws.grad


def run_naive(hs, ws, ht, wt, mask, upstream, temperature, kind, jsd_beta=0.5):
    hs, ws = hs.clone().requires_grad_(), ws.clone().requires_grad_()
    out = linear_kl_distill_naive(hs, ws, ht, wt, mask, temperature, kind, jsd_beta)
    (out * upstream.to(out.dtype)).sum().backward()
    return out.detach(), hs.grad, ws.grad


@pytest.mark.parametrize(
    "backend,dtype", [("triton", torch.float32), ("triton", torch.float16), ("torch", torch.float32)]
)
@pytest.mark.parametrize("kind,temperature", [("forward", 1.0), ("reverse", 1.7), ("jsd", 0.6)])
def test_matches_naive(monkeypatch, backend, dtype, kind, temperature):
    monkeypatch.setenv("VT_BACKEND", backend)
    # Several backward chunks (Triton) / token chunks (torch) even at this small T.
    monkeypatch.setattr(fused, "GRAD_CHUNK_BYTES", 32 * V * torch.finfo(dtype).bits // 8)
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 29 * V)
    hs, ws, ht, wt, mask = make_inputs(dtype)
    upstream = torch.randn(T)
    beta = 0.3 if kind == "jsd" else 0.5
    ours = run_ours(hs, ws, ht, wt, mask, upstream, temperature=temperature, kind=kind, jsd_beta=beta)
    ref = run_naive(hs.double(), ws.double(), ht.double(), wt.double(), mask, upstream, temperature, kind, beta)
    assert all(torch.isfinite(x).all() for x in ours)
    assert (ours[0][~mask] == 0).all() and (ours[1][~mask] == 0).all()
    if dtype == torch.float32:
        for a, b in zip(ours, ref):
            assert rel_err(a, b) < 2e-5
    else:
        # At most 2x the error of plain torch in fp16 (fp16 logits, fp32 softmax) against the float64 oracle.
        base = run_naive(hs, ws, ht, wt, mask, upstream, temperature, kind, beta)
        for a, b, c in zip(ours, ref, base):
            assert rel_err(a, b) <= 2 * rel_err(c, b) + 1e-4


def test_torch_path_fp16_and_chunks(monkeypatch):
    monkeypatch.setenv("VT_BACKEND", "torch")
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 16 * V)
    hs, ws, ht, wt, mask = make_inputs(torch.float16, seed=3)
    upstream = torch.randn(T)
    ours = run_ours(hs, ws, ht, wt, mask, upstream, kind="jsd", temperature=1.3)
    ref = run_naive(hs.double(), ws.double(), ht.double(), wt.double(), mask, upstream, 1.3, "jsd")
    base = run_naive(hs, ws, ht, wt, mask, upstream, 1.3, "jsd")
    for a, b, c in zip(ours, ref, base):
        assert rel_err(a, b) <= 2 * rel_err(c, b) + 1e-4


@pytest.mark.parametrize("kind", ["forward", "reverse", "jsd"])
def test_torch_path_full_vocab(monkeypatch, kind):
    """Vocabulary 151936 (Qwen2.5) on the torch path against the naive logits version, small T."""
    monkeypatch.setenv("VT_BACKEND", "torch")
    hs, ws, ht, wt, mask = make_inputs(torch.float32, n=5, ds=16, dt=24, v=151936, masked_frac=0.0, seed=1)
    mask[2] = False
    upstream = torch.randn(5)
    ours = run_ours(hs, ws, ht, wt, mask, upstream, kind=kind, temperature=0.8)
    ref = run_naive(hs.double(), ws.double(), ht.double(), wt.double(), mask, upstream, 0.8, kind)
    for a, b in zip(ours, ref):
        assert rel_err(a, b) < 1e-4


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_reductions_and_weights(monkeypatch, backend):
    monkeypatch.setenv("VT_BACKEND", backend)
    hs, ws, ht, wt, _ = make_inputs(torch.float32, n=21, v=300, seed=2)
    weights = torch.rand(21)
    weights[::4] = 0.0
    hs64, ws64, ht64, wt64 = (x.double() for x in (hs, ws, ht, wt))
    ref = linear_kl_distill_naive(hs64, ws64, ht64, wt64, weights, 1.0, "reverse")
    none = linear_kl_distill(hs, ws, ht, wt, weights, kind="reverse", reduction="none")
    total = linear_kl_distill(hs, ws, ht, wt, weights, kind="reverse", reduction="sum")
    mean = linear_kl_distill(hs, ws, ht, wt, weights, kind="reverse")
    assert none.dtype == torch.float32 and none.shape == (21,)
    assert rel_err(none, ref) < 2e-5
    assert rel_err(total, ref.sum()) < 2e-5
    assert rel_err(mean, ref.sum() / weights.double().sum()) < 2e-5
    unmasked = linear_kl_distill(hs, ws, ht, wt, None, kind="reverse", reduction="sum")
    whole = linear_kl_distill_naive(hs64, ws64, ht64, wt64, torch.ones(21), 1.0, "reverse").sum()
    assert rel_err(unmasked, whole) < 2e-5


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_masked(monkeypatch, backend, reduction):
    monkeypatch.setenv("VT_BACKEND", backend)
    hs, ws, ht, wt, _ = make_inputs(torch.float32, n=9, v=257)
    hs.requires_grad_()
    ws.requires_grad_()
    out = linear_kl_distill(hs, ws, ht, wt, torch.zeros(9, dtype=torch.bool), kind="jsd", reduction=reduction)
    assert (out == 0).all()
    out.sum().backward()
    assert (hs.grad == 0).all() and (ws.grad == 0).all()


def test_teacher_gets_no_gradient_and_student_only_needed_grads(monkeypatch):
    monkeypatch.setenv("VT_BACKEND", "torch")
    hs, ws, ht, wt, mask = make_inputs(torch.float32, n=11, v=200)
    ht.requires_grad_()
    wt.requires_grad_()
    hs.requires_grad_()
    linear_kl_distill(hs, ws, ht, wt, mask).backward()
    assert ht.grad is None and wt.grad is None and ws.grad is None
    assert hs.grad is not None and torch.isfinite(hs.grad).all()


def test_identical_models_give_zero():
    hs, ws, _, _, mask = make_inputs(torch.float32, n=13, ds=32, v=500)
    for kind in ("forward", "reverse", "jsd"):
        assert abs(linear_kl_distill(hs, ws, hs, ws, mask, kind=kind).item()) < 1e-5


@pytest.mark.parametrize("kind", ["forward", "reverse", "jsd"])
def test_optimizer_steps_lower_the_divergence(monkeypatch, kind):
    monkeypatch.setenv("VT_BACKEND", "torch")
    hs, ws, ht, wt, mask = make_inputs(torch.float32, n=32, ds=24, dt=40, v=400, seed=5)
    hs, ws = torch.nn.Parameter(hs), torch.nn.Parameter(ws)
    opt = torch.optim.Adam([hs, ws], lr=3e-2)
    losses = []
    for _ in range(12):
        loss = linear_kl_distill(hs, ws, ht, wt, mask, kind=kind, temperature=1.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    final = linear_kl_distill(hs, ws, ht, wt, mask, kind=kind, temperature=1.5).item()
    assert final < 0.6 * losses[0]
    assert all(b <= a + 1e-6 for a, b in zip(losses[:4], losses[1:5]))


def test_argument_checks():
    hs, ws, ht, wt, mask = make_inputs(torch.float32, n=7, v=50)
    with pytest.raises(ValueError, match="student_weight"):
        linear_kl_distill(hs, ws[:, :-1], ht, wt, mask)
    with pytest.raises(ValueError, match="teacher_hidden"):
        linear_kl_distill(hs, ws, ht[:-1], wt, mask)
    with pytest.raises(ValueError, match="teacher_weight"):
        linear_kl_distill(hs, ws, ht, wt[:-1], mask)
    with pytest.raises(ValueError, match="loss_mask"):
        linear_kl_distill(hs, ws, ht, wt, mask[:-1])
    with pytest.raises(ValueError, match="dtype"):
        linear_kl_distill(hs, ws, ht.half(), wt.half(), mask)
    with pytest.raises(ValueError, match="temperature"):
        linear_kl_distill(hs, ws, ht, wt, mask, temperature=0.0)
    with pytest.raises(ValueError, match="kind"):
        linear_kl_distill(hs, ws, ht, wt, mask, kind="kl")
    with pytest.raises(ValueError, match="reduction"):
        linear_kl_distill(hs, ws, ht, wt, mask, reduction="avg")
    with pytest.raises(ValueError, match="jsd_beta"):
        linear_kl_distill(hs, ws, ht, wt, mask, kind="jsd", jsd_beta=1.0)
    with pytest.raises(ValueError, match="backend"):
        linear_kl_distill(hs, ws, ht, wt, mask, backend="cuda")
    with pytest.raises(ValueError, match="grad_mode"):
        linear_kl_distill(hs, ws, ht, wt, mask, grad_mode="fused")


def test_backend_argument_overrides_the_environment(monkeypatch):
    """backend= picks the path whatever VT_BACKEND says (Triton in the interpreter here); both agree, and
    grad_mode="recompute" (the only gradient path) gives the default's gradients."""
    hs, ws, ht, wt, mask = make_inputs(torch.float32)
    upstream = torch.randn(T, generator=torch.Generator().manual_seed(3))
    monkeypatch.setenv("VT_BACKEND", "torch")
    calls = []
    real = fused.kl_distill_fwd
    monkeypatch.setattr(function, "kl_distill_fwd", lambda *a: calls.append(1) or real(*a))
    tri = run_ours(hs, ws, ht, wt, mask, upstream, kind="reverse", backend="triton")
    assert calls == [1]
    monkeypatch.setenv("VT_BACKEND", "triton")
    tor = run_ours(hs, ws, ht, wt, mask, upstream, kind="reverse", backend="torch", grad_mode="recompute")
    assert calls == [1]
    for a, b in zip(tri, tor):
        assert rel_err(a, b) < 2e-5


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["forward", "reverse", "jsd"])
def test_triton_bf16_on_gpu(monkeypatch, kind):
    """bf16 on CUDA (auto -> Triton): error against float64 at most 2x that of plain torch in bf16."""
    monkeypatch.setenv("VT_BACKEND", "auto")
    n, v = 1000, 32003
    hs, ws, ht, wt, mask = (x.cuda() for x in make_inputs(torch.bfloat16, n=n, ds=512, dt=768, v=v, seed=7))
    upstream = torch.randn(n, device="cuda")
    ours = run_ours(hs, ws, ht, wt, mask, upstream, kind=kind, temperature=1.3)
    ref = run_naive(hs.double(), ws.double(), ht.double(), wt.double(), mask, upstream, 1.3, kind)
    base = run_naive(hs, ws, ht, wt, mask, upstream, 1.3, kind)
    for a, b, c in zip(ours, ref, base):
        assert rel_err(a, b) <= 2 * rel_err(c, b) + 1e-4
