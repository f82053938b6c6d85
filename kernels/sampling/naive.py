"""The readable oracle of ``sample``: the distribution one row is drawn from, stated with sorts in float64."""

from __future__ import annotations

import math

import torch


def sample_distribution_naive(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                              min_p: float) -> torch.Tensor:
    """float64 [V] probabilities of the kept tokens of one row of logits [V] (temperature > 0), renormalised."""
    scaled = logits.double() / temperature
    keep = torch.ones_like(scaled, dtype=torch.bool)
    if 0 < top_k < scaled.numel():
        keep &= scaled >= torch.topk(scaled, top_k).values[-1]
    p = torch.softmax(scaled.masked_fill(~keep, -math.inf), -1)
    if top_p < 1:
        order = torch.argsort(p, descending=True)
        cum = torch.cumsum(p[order], 0)
        cut = p[order][int((cum >= top_p - 1e-12).nonzero()[0])]
        keep &= p >= cut
    p = torch.softmax(scaled.masked_fill(~keep, -math.inf), -1)
    keep &= p >= min_p * p.max()
    return torch.softmax(scaled.masked_fill(~keep, -math.inf), -1)
