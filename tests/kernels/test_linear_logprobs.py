"""linear_logprobs / linear_token_stats against a float64 naive reference that builds the logits.

Triton runs in the interpreter (TRITON_INTERPRET=1 from tests/conftest.py) on CPU tensors; the torch path
runs with small chunks so token and vocabulary chunking are both exercised.
"""

import pytest
import torch

from vt_core.kernels import linear_logprobs, linear_logprobs_reference, linear_token_stats
from vt_core.kernels.linear_logprobs import chunked, linear_token_loss, linear_token_stats_naive

T, D, V = 67, 48, 1031


@pytest.fixture
def small_torch_chunks(monkeypatch):
    monkeypatch.setattr(chunked, "TORCH_TOKEN_CHUNK", 16)
    monkeypatch.setattr(chunked, "TORCH_VOCAB_CHUNK", 300)


def make_inputs(dtype, t=T, d=D, v=V, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(t, d, generator=g).to(device, dtype).requires_grad_()
    weight = (torch.randn(v, d, generator=g) * 0.4).to(device, dtype).requires_grad_()
    targets = torch.randint(0, v, (t,), generator=g).to(device)
    return hidden, weight, targets


def naive_stats(hidden, weight, targets, temperature, dtype=torch.float64):
    """The oracle's (target_logit, lse, entropy, logit_sum) on ``dtype`` copies; those leaves returned too."""
    h = hidden.detach().to(dtype).requires_grad_()
    w = weight.detach().to(dtype).requires_grad_()
    return linear_token_stats_naive(h, w, targets, temperature), h, w


def close(actual, expected, tol):
    """Max abs error at most tol, scaled by the largest |expected| when that exceeds 1."""
    err = (actual.double() - expected.double()).abs().max().item()
    bound = tol * max(1.0, expected.double().abs().max().item())
    assert err <= bound, f"max abs error {err:.3e} > {bound:.3e}"


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_stats_and_grads_fp32(backend, monkeypatch, small_torch_chunks):
    monkeypatch.setenv("VT_BACKEND", backend)
    hidden, weight, targets = make_inputs(torch.float32)
    targets[5] = -1
    temperature = 0.7
    stats = linear_token_stats(hidden, weight, targets, temperature, entropy=True, logit_sum=True)
    ref, h64, w64 = naive_stats(hidden, weight, targets, temperature)
    ups = [torch.randn(T) for _ in range(4)]
    for got, want in zip(stats, ref):
        assert got.dtype == torch.float32 and got.shape == (T,)
        close(got, want, 1e-4)
    sum((s * u).sum() for s, u in zip(stats, ups)).backward()
    sum((r * u.double()).sum() for r, u in zip(ref, ups)).backward()
    close(hidden.grad, h64.grad, 1e-4)
    close(weight.grad, w64.grad, 1e-4)


@pytest.mark.parametrize(
    "backend,dtype,device,shape",
    [
        ("torch", torch.float16, "cpu", (T, D, V)),
        ("triton", torch.float16, "cpu", (T, D, V)),
        pytest.param("triton", torch.bfloat16, "cuda", (4099, 256, 32003), marks=pytest.mark.gpu),
    ],
)
def test_logprobs_half_within_twice_torch_error(backend, dtype, device, shape, monkeypatch):
    """fp16 (CPU) / bf16 (GPU): error against float64 at most 2x what plain torch (half logits) gets."""
    monkeypatch.setenv("VT_BACKEND", backend)
    n = shape[0]
    hidden, weight, targets = make_inputs(dtype, *shape, seed=1, device=device)
    temperature = 1.3
    logp, ent = linear_logprobs(hidden, weight, targets, temperature, return_entropy=True)
    g_lp, g_ent = torch.randn(n, device=device), torch.randn(n, device=device)
    ((logp * g_lp).sum() + (ent * g_ent).sum()).backward()

    (tgt, lse, ref_ent, _), h64, w64 = naive_stats(hidden, weight, targets, temperature)
    ((tgt - lse) * g_lp.double() + ref_ent * g_ent.double()).sum().backward()

    h16 = hidden.detach().clone().requires_grad_()
    w16 = weight.detach().clone().requires_grad_()
    z16 = (h16 @ w16.T).float() / temperature
    lp16 = torch.log_softmax(z16, 1)
    t_logp = lp16.gather(1, targets[:, None])[:, 0]
    t_ent = -(lp16.exp() * lp16).sum(1)
    ((t_logp * g_lp).sum() + (t_ent * g_ent).sum()).backward()

    for ours, torch16, exact in ((logp, t_logp, tgt - lse), (ent, t_ent, ref_ent),
                                 (hidden.grad, h16.grad, h64.grad), (weight.grad, w16.grad, w64.grad)):
        torch_err = (torch16.double() - exact).abs().max().item()
        err = (ours.double() - exact).abs().max().item()
        assert err <= 2 * torch_err + 1e-6, f"error {err:.3e} vs torch's own {torch_err:.3e}"


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_no_grad_path_and_grads_without_entropy(backend, monkeypatch, small_torch_chunks):
    monkeypatch.setenv("VT_BACKEND", backend)
    hidden, weight, targets = make_inputs(torch.float32, t=19, d=24, v=517, seed=2)
    weight.requires_grad_(False)
    with torch.no_grad():
        scored = linear_logprobs(hidden, weight, targets)
    logp = linear_logprobs(hidden, weight, targets)
    assert torch.equal(scored, logp.detach())
    up = torch.randn(19)
    (logp * up).sum().backward()
    assert weight.grad is None
    (tgt, lse, _, _), h64, _ = naive_stats(hidden, weight, targets, 1.0)
    ((tgt - lse) * up.double()).sum().backward()
    close(logp, tgt - lse, 1e-4)
    close(hidden.grad, h64.grad, 1e-4)


def toy_token_loss(coefs):
    """A non-linear per-token loss of all four statistics (each row's term uses only its own row)."""
    a, b, c = coefs

    def token_loss(st, rows):
        logp = st.target_logit - st.lse
        return torch.exp(0.3 * logp) * a[rows] + st.entropy.square() * b[rows] + 1e-2 * st.logit_sum * c[rows]

    return token_loss


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_token_loss_grad_modes_against_naive(backend, monkeypatch, small_torch_chunks):
    """linear_token_loss: the gradient taken in the forward and the recompute backward against float64 logits,
    under an upstream scalar != 1, with a "no target" row and a temperature."""
    monkeypatch.setenv("VT_BACKEND", backend)
    hidden, weight, targets = make_inputs(torch.float32, seed=5)
    targets[7] = -1
    coefs = [torch.randn(T) for _ in range(3)]
    fn = toy_token_loss(coefs)
    (tgt, lse, ent, lsum), h64, w64 = naive_stats(hidden, weight, targets, 0.8)
    want = (torch.exp(0.3 * (tgt - lse)) * coefs[0].double() + ent.square() * coefs[1].double()
            + 1e-2 * lsum * coefs[2].double()).sum()
    (want * 1.7).backward()
    for mode in ("fused", "recompute"):
        loss, stats = linear_token_loss(hidden, weight, targets, fn, 0.8, entropy=True, logit_sum=True,
                                        grad_mode=mode)
        assert loss.dim() == 0 and not stats.lse.requires_grad
        (loss * 1.7).backward()
        close(loss, want, 1e-5)
        close(stats.entropy, ent, 1e-4)
        close(hidden.grad, h64.grad, 1e-4)
        close(weight.grad, w64.grad, 1e-4)
        hidden.grad = weight.grad = None


@pytest.mark.parametrize("backend,dtype", [("torch", torch.float32), ("torch", torch.float16),
                                           ("triton", torch.float32), ("triton", torch.float16)])
def test_token_loss_fused_equals_recompute(backend, dtype, monkeypatch, small_torch_chunks):
    """Both gradient paths compute every logits chunk the same way: identical statistics; loss and
    gradients equal up to the rounding of the summation order (and of dtype for fp16 gradients)."""
    monkeypatch.setenv("VT_BACKEND", backend)
    hidden, weight, targets = make_inputs(dtype, seed=6)
    fn = toy_token_loss([torch.randn(T) for _ in range(3)])
    out = {}
    for mode in ("fused", "recompute"):
        loss, stats = linear_token_loss(hidden, weight, targets, fn, 1.3, entropy=True, logit_sum=True,
                                        grad_mode=mode)
        (loss * -0.6).backward()
        out[mode] = loss, stats, hidden.grad, weight.grad
        hidden.grad = weight.grad = None
    (loss_f, stats_f, dh_f, dw_f), (loss_r, stats_r, dh_r, dw_r) = out["fused"], out["recompute"]
    for a, b in zip(stats_f, stats_r):
        assert torch.equal(a, b)
    tol = 1e-6 if dtype == torch.float32 else 2e-3
    close(loss_f, loss_r, 1e-6)
    close(dh_f, dh_r, tol)
    close(dw_f, dw_r, tol)


def test_fused_logprobs_bitwise_equal_scoring_path(small_torch_chunks):
    """torch path, fp32: the logprobs the fused loss sees equal linear_logprobs' no-grad scoring bitwise
    (the exact on-policy guarantee of vt_core.generation.exact relies on it)."""
    hidden, weight, targets = make_inputs(torch.float32, seed=7)
    fn = toy_token_loss([torch.randn(T) for _ in range(3)])
    _, stats = linear_token_loss(hidden, weight, targets, fn, entropy=True, logit_sum=True, backend="torch",
                                 grad_mode="fused")
    with torch.no_grad():
        scored = linear_logprobs(hidden, weight, targets, backend="torch")
    assert torch.equal(stats.target_logit - stats.lse, scored)


def test_token_loss_frozen_weight_and_no_grad(small_torch_chunks):
    hidden, weight, targets = make_inputs(torch.float32, seed=8)
    weight.requires_grad_(False)
    fn = toy_token_loss([torch.randn(T) for _ in range(3)])
    loss, _ = linear_token_loss(hidden, weight, targets, fn, entropy=True, logit_sum=True, backend="torch")
    loss.backward()
    assert weight.grad is None and hidden.grad is not None
    with torch.no_grad():
        scored, _ = linear_token_loss(hidden, weight, targets, fn, entropy=True, logit_sum=True, backend="torch")
    close(scored, loss.detach(), 1e-6)
    with pytest.raises(ValueError, match="grad_mode"):
        linear_token_loss(hidden, weight, targets, fn, grad_mode="stored")


def test_reference_at_qwen_vocab_against_naive():
    """The chunked torch reference at V = 151936 (many vocab chunks) against full float64 logits."""
    hidden, weight, targets = make_inputs(torch.float32, t=8, d=16, v=151936, seed=3)
    targets[0] = 151935
    logp, ent = linear_logprobs_reference(hidden, weight, targets, 0.9, return_entropy=True)
    up_lp, up_ent = torch.randn(8), torch.randn(8)
    ((logp * up_lp).sum() + (ent * up_ent).sum()).backward()
    (tgt, lse, ref_ent, _), h64, w64 = naive_stats(hidden, weight, targets, 0.9)
    ((tgt - lse) * up_lp.double() + ref_ent * up_ent.double()).sum().backward()
    close(logp, tgt - lse, 1e-4)
    close(ent, ref_ent, 1e-4)
    close(hidden.grad, h64.grad, 1e-4)
    close(weight.grad, w64.grad, 1e-5)


def test_backends_agree_and_single_token():
    hidden, weight, targets = make_inputs(torch.float32, t=1, d=16, v=70, seed=4)
    a = linear_logprobs(hidden, weight, targets, backend="torch")
    b = linear_logprobs(hidden, weight, targets, backend="triton")
    close(a, b, 1e-5)


def test_argument_checks():
    hidden, weight, targets = make_inputs(torch.float32, t=5, d=8, v=11)
    with pytest.raises(ValueError, match="hidden"):
        linear_logprobs(hidden[None], weight, targets)
    with pytest.raises(ValueError, match="weight"):
        linear_logprobs(hidden, weight[:, :4], targets)
    with pytest.raises(ValueError, match="targets"):
        linear_logprobs(hidden, weight, targets[:3])
    with pytest.raises(ValueError, match="targets must be < V"):
        linear_logprobs(hidden, weight, torch.full((5,), 11))
    with pytest.raises(ValueError, match="targets must be >= 0"):
        linear_logprobs(hidden, weight, torch.full((5,), -1))
    with pytest.raises(ValueError, match="temperature"):
        linear_logprobs(hidden, weight, targets, temperature=0.0)
    with pytest.raises(ValueError, match="dtype"):
        linear_logprobs(hidden, weight.detach().double(), targets)
