"""linear_cross_entropy against torch's cross_entropy on float64 logits (plus a hand-written z-loss)."""

import pytest
import torch

from vt_core.kernels import linear_cross_entropy
from vt_core.kernels.cross_entropy import linear_cross_entropy_naive

T, D, V = 67, 48, 1031


def make_inputs(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(T, D, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(V, D, generator=g) * 0.4).to(dtype).requires_grad_()
    targets = torch.randint(0, V, (T,), generator=g)
    targets[torch.randperm(T, generator=g)[:20]] = -100
    return hidden, weight, targets


def naive_ce(hidden, weight, targets, reduction, label_smoothing, z_loss):
    """The oracle on float64 copies of hidden and weight; those leaves returned too."""
    h = hidden.detach().double().requires_grad_()
    w = weight.detach().double().requires_grad_()
    return linear_cross_entropy_naive(h, w, targets, -100, reduction, label_smoothing, z_loss), h, w


def check(ours, ref, hidden, weight, h64, w64, tol):
    up = torch.randn(ours.shape, dtype=torch.float64)
    (ours * up.float()).sum().backward()
    (ref * up).sum().backward()
    for a, b in ((ours, ref), (hidden.grad, h64.grad), (weight.grad, w64.grad)):
        err = (a.double() - b).abs().max().item()
        assert err <= tol * max(1.0, b.abs().max().item()), err


@pytest.mark.parametrize(
    "backend,reduction,label_smoothing,z_loss,grad_mode",
    [
        ("torch", "mean", 0.0, 0.0, "fused"),
        ("torch", "mean", 0.0, 0.0, "recompute"),
        ("torch", "sum", 0.1, 1e-3, "fused"),
        ("torch", "sum", 0.1, 1e-3, "recompute"),
        ("torch", "none", 0.2, 0.0, None),
        ("triton", "mean", 0.1, 1e-4, "fused"),
        ("triton", "mean", 0.1, 1e-4, "recompute"),
        ("triton", "none", 0.0, 1e-3, None),
    ],
)
def test_against_naive_fp32(backend, reduction, label_smoothing, z_loss, grad_mode, monkeypatch):
    monkeypatch.setenv("VT_BACKEND", backend)
    hidden, weight, targets = make_inputs(torch.float32)
    ours = linear_cross_entropy(hidden, weight, targets, reduction=reduction,
                                label_smoothing=label_smoothing, z_loss=z_loss, grad_mode=grad_mode)
    ref, h64, w64 = naive_ce(hidden, weight, targets, reduction, label_smoothing, z_loss)
    assert ours.dtype == torch.float32
    if reduction == "none":
        assert torch.all(ours[targets == -100] == 0)
    check(ours, ref, hidden, weight, h64, w64, 2e-5)


def test_triton_fp16_close_to_torch_fp16(monkeypatch):
    """fp16 Triton path: error against float64 at most 2x that of torch cross_entropy on fp16 logits."""
    monkeypatch.setenv("VT_BACKEND", "triton")
    hidden, weight, targets = make_inputs(torch.float16, seed=1)
    ours = linear_cross_entropy(hidden, weight, targets, label_smoothing=0.1)
    ref, h64, w64 = naive_ce(hidden, weight, targets, "mean", 0.1, 0.0)
    torch16 = linear_cross_entropy_naive(hidden.detach(), weight.detach(), targets, label_smoothing=0.1)
    torch_err = (torch16.double() - ref).abs().item()
    assert (ours.double() - ref).abs().item() <= 2 * torch_err + 1e-6


def test_all_ignored_and_ignore_index(monkeypatch):
    monkeypatch.setenv("VT_BACKEND", "torch")
    hidden, weight, _ = make_inputs(torch.float32)
    targets = torch.full((T,), 7)
    targets[::2] = 3
    ours = linear_cross_entropy(hidden, weight, targets, ignore_index=3, reduction="sum")
    ref = linear_cross_entropy_naive(hidden.detach(), weight.detach(), targets, ignore_index=3, reduction="sum")
    assert abs(ours.item() - ref.item()) <= 1e-4 * abs(ref.item())
    none = linear_cross_entropy(hidden, weight, torch.full((T,), -100))
    assert none.item() == 0.0
    none.backward()
    assert torch.all(hidden.grad == 0)


def test_argument_checks():
    hidden, weight, targets = make_inputs(torch.float32)
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(hidden, weight, targets, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        linear_cross_entropy(hidden, weight, targets, label_smoothing=1.5)
    with pytest.raises(ValueError, match="z_loss"):
        linear_cross_entropy(hidden, weight, targets, z_loss=-1.0)
    with pytest.raises(ValueError, match="negative"):
        linear_cross_entropy(hidden, weight, torch.full((T,), -5))
    with pytest.raises(ValueError, match="grad_mode"):
        linear_cross_entropy(hidden, weight, targets, grad_mode="stored")
    with pytest.raises(ValueError, match="scalar loss"):
        linear_cross_entropy(hidden, weight, targets, reduction="none", grad_mode="fused")
    with pytest.raises(ValueError, match="targets"):
        linear_cross_entropy(hidden, weight, targets[:-1])
