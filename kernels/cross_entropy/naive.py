"""The readable oracle of ``linear_cross_entropy``: torch's ``cross_entropy`` on the full [T, V] logits, plus z-loss.

The logits are taken in the inputs' dtype, the loss in float64 for float64 inputs (the tests' oracle) and in fp32
otherwise (what plain PyTorch in that dtype gets: the bench baseline). Differentiable in hidden and weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_cross_entropy_naive(hidden, weight, targets, ignore_index: int = -100, reduction: str = "mean",
                               label_smoothing: float = 0.0, z_loss: float = 0.0) -> torch.Tensor:
    """Same arguments and results as ``linear_cross_entropy`` ("mean" over non-ignored tokens)."""
    logits = (hidden @ weight.T).to(torch.float64 if hidden.dtype == torch.float64 else torch.float32)
    loss = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="none",
                           label_smoothing=label_smoothing)
    valid = targets != ignore_index
    if z_loss:
        loss = loss + torch.where(valid, z_loss * logits.logsumexp(1).square(), 0.0)
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / valid.sum()
    return loss
