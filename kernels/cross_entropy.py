"""Fused linear cross-entropy for SFT: ``hidden @ weight.T`` -> token NLL, never building [T, V] logits.

Per token with a target (targets != ignore_index), from the fused statistics of ``linear_token_stats``
(lse = logsumexp of the logits, z_y = target logit, S = sum of the logits over the vocabulary):

    loss_t = (1 - eps) * (lse - z_y) + eps * (lse - S / V) + z_loss * lse**2

which is torch's ``cross_entropy`` with ``label_smoothing=eps`` plus the PaLM z-loss. The Triton and
torch paths and the backward live in ``linear_logprobs``; this file is [T]-sized math on top.
"""

from __future__ import annotations

from typing import Optional

import torch

from .linear_logprobs import check_linear_inputs, linear_token_stats

_REDUCTIONS = ("mean", "sum", "none")


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Cross-entropy of ``targets`` under ``softmax(hidden @ weight.T)``, fused over vocabulary tiles.

    hidden: [T, D] float; weight: [V, D] (the LM head), same dtype/device; targets: [T] integer in [0, V)
    or ``ignore_index``. reduction: "mean" (over non-ignored tokens; 0 when every token is ignored, where
    torch gives NaN), "sum", or "none" ([T], 0 at ignored tokens). label_smoothing in [0, 1]; z_loss >= 0
    adds ``z_loss * logsumexp(logits)**2`` per non-ignored token. Returns fp32. ``backend`` overrides
    ``VT_BACKEND`` ("torch" or "triton").
    """
    op = "linear_cross_entropy"
    check_linear_inputs(op, hidden, weight, targets)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{op}: label_smoothing must be in [0, 1], got {label_smoothing}")
    if z_loss < 0:
        raise ValueError(f"{op}: z_loss must be >= 0, got {z_loss}")
    valid = targets != ignore_index
    if bool((valid & (targets < 0)).any()):
        raise ValueError(f"{op}: targets must be in [0, V) or ignore_index={ignore_index}, found negative ids")
    ids = torch.where(valid, targets, -1)
    stats = linear_token_stats(hidden, weight, ids, logit_sum=label_smoothing > 0, backend=backend)
    loss = stats.lse - stats.target_logit
    if label_smoothing > 0:
        smooth = stats.lse - stats.logit_sum / weight.shape[0]
        loss = (1.0 - label_smoothing) * loss + label_smoothing * smooth
    if z_loss > 0:
        loss = loss + z_loss * stats.lse.square()
    loss = torch.where(valid, loss, 0.0)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / valid.sum().clamp(min=1)
