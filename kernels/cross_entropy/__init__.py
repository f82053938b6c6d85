"""Fused linear cross-entropy for SFT: ``hidden @ weight.T`` -> token NLL, never building [T, V] logits.

Per token with a target (targets != ignore_index), from the fused statistics of ``linear_token_stats``
(lse = logsumexp of the logits, z_y = target logit, S = sum of the logits over the vocabulary):

    loss_t = (1 - eps) * (lse - z_y) + eps * (lse - S / V) + z_loss * lse**2

which is torch's ``cross_entropy`` with ``label_smoothing=eps`` plus the PaLM z-loss. The Triton and
torch paths and the backward live in ``kernels/linear_logprobs/``; this file is [T]-sized math on top, and
``naive.py`` the readable oracle (``linear_cross_entropy_naive``, also the bench baseline). Reductions
"mean" and "sum" are a sum of per-token terms, so their gradient is taken in the forward
(``linear_token_loss``, 6 T D V flops instead of 8) whenever gradients are needed; "none" (any upstream
gradient) recomputes the logits in the backward.
"""

from __future__ import annotations

from typing import Optional

import torch

from .._linear import GRAD_MODES, check_linear_inputs
from ..linear_logprobs import linear_token_loss, linear_token_stats
from .naive import linear_cross_entropy_naive

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
    grad_mode: Optional[str] = None,
) -> torch.Tensor:
    """Cross-entropy of ``targets`` under ``softmax(hidden @ weight.T)``, fused over vocabulary tiles.

    hidden: [T, D] float; weight: [V, D] (the LM head), same dtype/device; targets: [T] integer in [0, V)
    or ``ignore_index``. reduction: "mean" (over non-ignored tokens; 0 when every token is ignored, where
    torch gives NaN), "sum", or "none" ([T], 0 at ignored tokens). label_smoothing in [0, 1]; z_loss >= 0
    adds ``z_loss * logsumexp(logits)**2`` per non-ignored token. Returns fp32. ``backend`` overrides
    ``VT_BACKEND`` ("torch" or "triton"). grad_mode: None (auto), "fused" (gradient in the forward; "mean"
    and "sum" only) or "recompute" (logits recomputed in the backward); see ``linear_token_loss``.
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
    if grad_mode not in (None, *GRAD_MODES):
        raise ValueError(f"{op}: grad_mode must be None, 'fused' or 'recompute', got {grad_mode!r}")
    if reduction == "none" and grad_mode == "fused":
        raise ValueError(f"{op}: grad_mode='fused' needs a scalar loss (reduction 'mean' or 'sum')")
    ids = torch.where(valid, targets, -1)
    scale = 1.0 if reduction != "mean" else 1.0 / valid.sum().clamp(min=1)
    V = weight.shape[0]

    def token_loss(stats, rows: slice) -> torch.Tensor:
        loss = stats.lse - stats.target_logit
        if label_smoothing > 0:
            loss = (1.0 - label_smoothing) * loss + label_smoothing * (stats.lse - stats.logit_sum / V)
        if z_loss > 0:
            loss = loss + z_loss * stats.lse.square()
        return torch.where(valid[rows], loss, 0.0) * scale

    if reduction == "none":
        stats = linear_token_stats(hidden, weight, ids, logit_sum=label_smoothing > 0, backend=backend)
        return token_loss(stats, slice(0, hidden.shape[0]))
    return linear_token_loss(hidden, weight, ids, token_loss, logit_sum=label_smoothing > 0, backend=backend,
                             grad_mode=grad_mode)[0]


__all__ = ["linear_cross_entropy", "linear_cross_entropy_naive"]
