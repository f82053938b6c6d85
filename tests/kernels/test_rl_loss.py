"""linear_rl_loss against a hand-written per-token, per-sequence loop on float64 naive logits.

The packed batch has sequences of length 1, a fully masked sequence, masked tokens inside sequences and
NaN old/ref/rollout logprobs at masked positions (they must not leak into the loss or its gradient).
"""

import importlib

import pytest
import torch

from vt_core.kernels import RLLossConfig, expand_to_tokens, linear_rl_loss
from vt_core.kernels.linear_logprobs import linear_logprobs_naive
from vt_core.kernels.rl_loss import rl_loss_naive

D, V = 48, 1031
LENGTHS = [9, 1, 14, 7, 1, 20, 15]  # T = 67; sequence 3 is fully masked, sequences 1 and 4 have one token
T = sum(LENGTHS)


def make_batch(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(T, D, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(V, D, generator=g) * 0.4).to(dtype).requires_grad_()
    targets = torch.randint(0, V, (T,), generator=g)
    cu = torch.tensor([0] + LENGTHS).cumsum(0).to(torch.int32)
    mask = torch.rand(T, generator=g) < 0.8
    mask[cu[3]:cu[4]] = False
    mask[cu[1]] = True
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, -1.0, 1.0])
    adv = expand_to_tokens(signs * (0.3 + torch.rand(len(LENGTHS), generator=g)), cu)
    return hidden, weight, targets, cu, mask, adv, g


def side_logprobs(logp, mask, g):
    """old / ref / rollout logprobs near the current ones (ratios on both sides of the clip), NaN off-mask."""
    out = []
    for scale in (0.6, 0.4, 0.2):
        x = logp.detach().float() + scale * torch.randn(T, generator=g)
        out.append(torch.where(mask, x, torch.nan))
    out[2] = torch.where(mask, out[0] + 0.2 * torch.randn(T, generator=g), torch.nan)
    return out


def naive_logp_entropy(hidden, weight, targets, temperature):
    """The linear_logprobs oracle on float64 copies of hidden and weight; those leaves returned too."""
    h = hidden.detach().double().requires_grad_()
    w = weight.detach().double().requires_grad_()
    logp, ent = linear_logprobs_naive(h, w, targets, temperature, return_entropy=True)
    return logp, ent, h, w


CONFIGS = [
    ("grpo", RLLossConfig(), True),
    ("clip_higher", RLLossConfig(eps_low=0.2, eps_high=0.28), True),
    ("dual_clip", RLLossConfig(dual_clip_c=1.5), True),
    ("kl_k1", RLLossConfig(beta=0.1, kl_estimator="k1"), True),
    ("kl_k2", RLLossConfig(beta=0.1, kl_estimator="k2"), True),
    ("kl_k3_entropy", RLLossConfig(beta=0.05, kl_estimator="k3", entropy_coef=0.01), True),
    ("gspo", RLLossConfig(ratio_level="sequence", eps_low=3e-4, eps_high=4e-4), True),
    ("tis_token_truncate", RLLossConfig(tis_mode="token", tis_cap=1.2), True),
    ("tis_sequence_mask", RLLossConfig(tis_mode="sequence", tis_action="mask", tis_cap=1.5), True),
    ("seq_mean_token_mean", RLLossConfig(aggregation="seq_mean_token_mean"), True),
    ("seq_mean_token_sum", RLLossConfig(aggregation="seq_mean_token_sum"), True),
    ("constant", RLLossConfig(aggregation="constant", max_tokens=7 * 32), True),
    ("temperature", RLLossConfig(temperature=0.7, beta=0.02, entropy_coef=0.01), True),
    ("on_policy", RLLossConfig(beta=0.02, entropy_coef=0.02), False),
    ("gspo_on_policy", RLLossConfig(ratio_level="sequence", aggregation="seq_mean_token_mean"), False),
    ("tis_sequence_without_old", RLLossConfig(tis_mode="sequence", tis_cap=1.5, beta=0.02), False),
]


def run_case(cfg, with_old, dtype, backend, monkeypatch, seed=0, grad_mode=None):
    monkeypatch.setenv("VT_BACKEND", backend)
    hidden, weight, targets, cu, mask, adv, g = make_batch(dtype, seed)
    logp64, ent64, h64, w64 = naive_logp_entropy(hidden, weight, targets, cfg.temperature)
    old, ref, rollout = side_logprobs(logp64, mask, g)
    old = old if with_old else None
    loss, metrics = linear_rl_loss(hidden, weight, targets, adv, mask, cu, old, ref, rollout, cfg, grad_mode=grad_mode)
    want, want_metrics = rl_loss_naive(logp64, ent64, adv, mask, cu, old, ref, rollout, cfg)
    up = float(torch.randn((), generator=g))
    (loss * up).backward()
    (want * up).backward()
    return loss, metrics, want, want_metrics, (hidden.grad, h64.grad), (weight.grad, w64.grad)


def assert_close(actual, expected, tol):
    a, e = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    err = (a - e).abs().max().item()
    assert err <= tol * max(1.0, e.abs().max().item()), f"error {err:.3e}"


NOT_SEPARABLE = ("gspo", "tis_sequence_without_old")  # a term depends on the whole sequence's current logprobs


@pytest.mark.parametrize("grad_mode", [None, "recompute"])
@pytest.mark.parametrize("name,cfg,with_old", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_config_against_hand_formula(name, cfg, with_old, grad_mode, monkeypatch):
    """Every option, both gradient paths: auto (gradient in the forward except for the two sequence-level
    cases, checked below) and recompute."""
    loss, metrics, want, want_metrics, dh, dw = run_case(cfg, with_old, torch.float32, "torch", monkeypatch,
                                                         grad_mode=grad_mode)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert_close(loss, want, 1e-5)
    expected_keys = set(want_metrics)
    expected_keys |= {"tis_weight_mean", "tis_capped_frac"} if cfg.tis_mode is not None else set()
    expected_keys |= {"dual_clip_frac"} if cfg.dual_clip_c is not None else set()
    assert set(metrics) == expected_keys
    for key, value in want_metrics.items():
        assert metrics[key].dim() == 0 and not metrics[key].requires_grad
        assert_close(metrics[key], value, 1e-5)
    assert_close(*dh, 1e-5)
    assert_close(*dw, 1e-5)


@pytest.mark.parametrize("grad_mode", ["fused", "recompute"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_path(dtype, grad_mode, monkeypatch):
    cfg = RLLossConfig(eps_high=0.28, dual_clip_c=3.0, beta=0.04, entropy_coef=0.01, temperature=0.9,
                       tis_mode="token", aggregation="seq_mean_token_mean")
    loss, metrics, want, want_metrics, dh, dw = run_case(cfg, True, dtype, "triton", monkeypatch, seed=1,
                                                         grad_mode=grad_mode)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert_close(loss, want, tol)
    for key, value in want_metrics.items():
        if not key.startswith("clip_frac"):  # fp16 logits can move a ratio across the clip boundary
            assert_close(metrics[key], value, tol)
    assert_close(*dh, tol)
    assert_close(*dw, tol)


@pytest.mark.parametrize("name,cfg,with_old", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_grad_modes_agree_and_auto_choice(name, cfg, with_old, monkeypatch):
    """Gradient in the forward and recompute give the same loss, metrics and gradients (fp32 rounding);
    auto takes the gradient in the forward exactly when every term is per-token, and asking for it otherwise
    is an error."""
    rl = importlib.import_module("vt_core.kernels.rl_loss")
    fused_calls = []
    real = rl.linear_token_loss
    monkeypatch.setattr(rl, "linear_token_loss", lambda *a, **k: fused_calls.append(1) or real(*a, **k))
    modes = (None, "recompute") if name in NOT_SEPARABLE else ("fused", "recompute")
    outs = [run_case(cfg, with_old, torch.float32, "torch", monkeypatch, grad_mode=m) for m in modes]
    (loss, metrics, _, _, (dh, _), (dw, _)), (loss_r, metrics_r, _, _, (dh_r, _), (dw_r, _)) = outs
    assert_close(loss, loss_r, 1e-6)
    for key in metrics_r:
        assert_close(metrics[key], metrics_r[key], 1e-6)
    assert_close(dh, dh_r, 1e-6)
    assert_close(dw, dw_r, 1e-6)
    run_case(cfg, with_old, torch.float32, "torch", monkeypatch)
    assert len(fused_calls) == (0 if name in NOT_SEPARABLE else 2)
    if name in NOT_SEPARABLE:
        with pytest.raises(ValueError, match="sequence-level"):
            run_case(cfg, with_old, torch.float32, "torch", monkeypatch, grad_mode="fused")


def test_packed_equals_per_sequence_loop(monkeypatch):
    """Sequence-mean aggregation of the packed batch equals the mean of each sequence run alone."""
    monkeypatch.setenv("VT_BACKEND", "torch")
    hidden, weight, targets, cu, mask, adv, g = make_batch(torch.float32, seed=2)
    old = torch.randn(T, generator=g) * 0.1 - 5.0
    cfg = RLLossConfig(aggregation="seq_mean_token_mean")
    packed, _ = linear_rl_loss(hidden, weight, targets, adv, mask, cu, old, config=cfg)
    alone = []
    for i in range(len(LENGTHS)):
        s = slice(int(cu[i]), int(cu[i + 1]))
        if mask[s].any():
            one = torch.tensor([0, LENGTHS[i]])
            alone.append(linear_rl_loss(hidden[s], weight, targets[s], adv[s], mask[s], one, old[s], config=cfg)[0])
    assert_close(packed, torch.stack(alone).mean(), 1e-6)


def test_checks():
    hidden, weight, targets, cu, mask, adv, _ = make_batch(torch.float32)
    with pytest.raises(ValueError, match="advantages"):
        linear_rl_loss(hidden, weight, targets, adv[:-1], mask, cu)
    with pytest.raises(ValueError, match="cu_seqlens"):
        linear_rl_loss(hidden, weight, targets, adv, mask, cu[:-1])
    with pytest.raises(ValueError, match="ref_logprobs"):
        linear_rl_loss(hidden, weight, targets, adv, mask, cu, config=RLLossConfig(beta=0.1))
    with pytest.raises(ValueError, match="rollout_logprobs"):
        linear_rl_loss(hidden, weight, targets, adv, mask, cu, config=RLLossConfig(tis_mode="token"))
    for bad in (dict(aggregation="constant"), dict(kl_estimator="k4"), dict(dual_clip_c=0.5),
                dict(ratio_level="seq"), dict(tis_action="drop"), dict(eps_low=1.0), dict(temperature=0.0)):
        with pytest.raises(ValueError, match="RLLossConfig"):
            RLLossConfig(**bad)
