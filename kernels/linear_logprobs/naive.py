"""The readable oracle of the linear-token statistics: straight from the maths, building the full [T, V] logits.

Float64-friendly: the logits are taken in the inputs' dtype and everything after in float64 for float64 inputs
(the tests' oracle) or fp32 otherwise (what plain PyTorch in that dtype gets: the bench baseline). Differentiable
in hidden and weight.
"""

from __future__ import annotations

import torch


def _accumulator(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def linear_token_stats_naive(hidden, weight, targets, temperature: float = 1.0):
    """(target_logit, lse, entropy, logit_sum), each [T], of ``softmax(hidden @ weight.T / temperature)``;
    target_logit is 0 where the target is negative."""
    z = (hidden @ weight.T).to(_accumulator(hidden)) / temperature
    lse = z.logsumexp(1)
    logp_all = z - lse[:, None]
    entropy = -(logp_all.exp() * logp_all).sum(1)
    target = torch.where(targets >= 0, z.gather(1, targets.clamp(min=0)[:, None])[:, 0], 0.0)
    return target, lse, entropy, z.sum(1)


def linear_logprobs_naive(hidden, weight, targets, temperature: float = 1.0, return_entropy: bool = False):
    """logprobs [T] (and entropy [T]) of ``targets`` under ``softmax(hidden @ weight.T / temperature)``."""
    logp_all = torch.log_softmax((hidden @ weight.T).to(_accumulator(hidden)) / temperature, -1)
    logprobs = logp_all.gather(1, targets[:, None])[:, 0]
    if not return_entropy:
        return logprobs
    return logprobs, -(logp_all.exp() * logp_all).sum(1)
