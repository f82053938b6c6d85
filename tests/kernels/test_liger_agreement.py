"""linear_rl_loss agrees with liger-kernel's LigerFusedLinearGRPOLoss (CPU, fp32) on loss, grads and metrics.

Mapping (liger's padded [B, L] batch -> our packed batch):
- tokens: hidden [B, L, D] -> [B*L, D]; every row is one sequence, cu_seqlens = [0, L, 2L, ..., B*L];
  liger's attention_mask (the completion mask) -> loss_mask; advantages [B] -> repeated over each row's L tokens;
  old/ref per-token logprobs [B, L] -> flattened [B*L].
- loss_type="grpo"    -> aggregation="seq_mean_token_mean" (liger divides by B, we by the number of sequences
                         with at least one masked token: the same here, every row has one).
- loss_type="dapo"    -> aggregation="token_mean" (single process: liger's normaliser is the mask sum).
- loss_type="dr_grpo" -> aggregation="constant" with max_tokens = B * max_completion_length.
- epsilon_low/epsilon_high -> eps_low/eps_high; beta > 0 uses k3 on both sides (liger's only estimator);
  importance_sampling_level="sequence" -> ratio_level="sequence" (liger broadcasts the sequence ratio, we use
  GSPO's stop-gradient token form: same values and, since every aggregation weights a sequence's tokens
  equally, the same gradients); temperature -> config.temperature.
- metrics: liger's [kl (when beta > 0), clip ratio] -> our kl_mean and clip_frac_low + clip_frac_high.
"""

import pytest
import torch
from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

from vt_core.kernels import RLLossConfig, linear_rl_loss

B, L, D, V = 4, 13, 32, 1031
ROW_LENGTHS = [13, 9, 5, 1]

CASES = [
    ("torch", "grpo", "seq_mean_token_mean", 0.0, 0.2, 0.2, "token"),
    ("torch", "grpo", "seq_mean_token_mean", 0.04, 0.2, 0.28, "token"),
    ("torch", "dapo", "token_mean", 0.04, 0.2, 0.28, "token"),
    ("torch", "dr_grpo", "constant", 0.1, 0.1, 0.3, "token"),
    ("torch", "grpo", "seq_mean_token_mean", 0.04, 3e-4, 4e-4, "sequence"),
    ("triton", "dapo", "token_mean", 0.04, 0.2, 0.28, "token"),
]


@pytest.mark.parametrize("backend,loss_type,aggregation,beta,eps_low,eps_high,level", CASES)
def test_matches_liger(backend, loss_type, aggregation, beta, eps_low, eps_high, level, monkeypatch):
    monkeypatch.setenv("VT_BACKEND", backend)
    g = torch.Generator().manual_seed(0)
    temperature = 0.8
    hidden = torch.randn(B, L, D, generator=g)
    weight = torch.randn(V, D, generator=g) * 0.3
    ids = torch.randint(0, V, (B, L), generator=g)
    mask = torch.zeros(B, L)
    for b, n in enumerate(ROW_LENGTHS):
        mask[b, :n] = 1
    mask[0, 4] = 0
    adv = torch.tensor([1.2, -0.7, 0.4, -1.5])
    with torch.no_grad():
        logits = (hidden.reshape(-1, D) @ weight.T) / temperature
        cur = torch.log_softmax(logits, -1).gather(1, ids.reshape(-1, 1)).reshape(B, L)
    old = cur + 0.5 * torch.randn(B, L, generator=g)
    ref = cur + 0.4 * torch.randn(B, L, generator=g)

    h_liger = hidden.clone().requires_grad_()
    w_liger = weight.clone().requires_grad_()
    liger = LigerFusedLinearGRPOLoss(
        beta=beta, compiled=False, use_ref_model=beta > 0, chunk_size=1, epsilon_low=eps_low,
        epsilon_high=eps_high, loss_type=loss_type, max_completion_length=L,
        importance_sampling_level=level, temperature=temperature,
    )
    liger_loss, liger_metrics = liger(
        h_liger, w_liger, ids, mask, adv, ref_per_token_logps=ref if beta > 0 else None, old_per_token_logps=old
    )

    h_ours = hidden.reshape(B * L, D).clone().requires_grad_()
    w_ours = weight.clone().requires_grad_()
    config = RLLossConfig(eps_low=eps_low, eps_high=eps_high, beta=beta, kl_estimator="k3",
                          ratio_level=level, aggregation=aggregation, max_tokens=B * L, temperature=temperature)
    loss, metrics = linear_rl_loss(
        h_ours, w_ours, ids.reshape(-1), adv.repeat_interleave(L), mask.reshape(-1),
        torch.arange(0, B * L + 1, L), old.reshape(-1), ref.reshape(-1) if beta > 0 else None, config=config,
    )
    up = 0.37
    (liger_loss * up).backward()
    (loss * up).backward()

    torch.testing.assert_close(loss, liger_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_ours.grad, h_liger.grad.reshape(B * L, D), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w_ours.grad, w_liger.grad, rtol=1e-4, atol=1e-6)
    clip = metrics["clip_frac_low"] + metrics["clip_frac_high"]
    torch.testing.assert_close(clip, liger_metrics[-1].float(), rtol=1e-6, atol=1e-6)
    assert 0 < clip.item() < 1
    if beta > 0:
        torch.testing.assert_close(metrics["kl_mean"], liger_metrics[0].float(), rtol=1e-5, atol=1e-6)
