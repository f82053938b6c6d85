"""Group-relative advantages for GRPO-family RL, with MGPO weights and zero-variance group flags.

Samples are grouped (the n completions of one prompt); each estimator turns rewards [N] into
advantages [N] using only the group's own statistics (REINFORCE++ also normalises over the batch):

- ``grpo``:          (r - mean_g) / (std_g + eps), std unbiased (n_g - 1), a group of one gets 0.
- ``dr_grpo``:       r - mean_g (Dr.GRPO drops the std division).
- ``rloo``:          r - mean of the other samples of the group, i.e. n_g / (n_g - 1) * (r - mean_g).
- ``reinforce_pp``:  a = r - mean_g, then (a - mean(a)) / (std(a) + eps) over the whole batch.

MGPO (entropy-guided weighting): p = fraction of the group whose reward exceeds ``correct_threshold``,
D = p log(p / 0.5) + (1 - p) log((1 - p) / 0.5) (0 log 0 = 0), w = exp(-mgpo_lambda * D); the
advantages are multiplied by w, so groups near a 50% pass rate weigh most. mgpo_lambda = 0 gives w = 1.

Everything is [N]-sized torch (scatter-add over groups); there is nothing here worth a kernel. To use a
per-sample advantage in ``linear_rl_loss`` expand it to tokens with :func:`expand_to_tokens`. ``naive.py`` holds
the readable oracle, a per-group Python loop (``group_advantages_naive``).
"""

from __future__ import annotations

import math

import torch

from .naive import group_advantages_naive

ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp")


def _group_index(n: int, group_size, group_ids, device) -> torch.Tensor:
    if (group_size is None) == (group_ids is None):
        raise ValueError("group_advantages: pass exactly one of group_size and group_ids")
    if group_size is not None:
        if int(group_size) < 1 or n % int(group_size):
            raise ValueError(f"group_advantages: group_size must be >= 1 and divide N = {n}, got {group_size}")
        return torch.arange(n, device=device) // int(group_size)
    if group_ids.dim() != 1 or group_ids.shape[0] != n:
        raise ValueError(
            f"group_advantages: group_ids must be 1-D [N] with N = {n}, got shape {tuple(group_ids.shape)}"
        )
    return torch.unique(group_ids, return_inverse=True)[1]


def group_advantages(
    rewards: torch.Tensor,
    group_size: int | None = None,
    group_ids: torch.Tensor | None = None,
    estimator: str = "grpo",
    mgpo_lambda: float = 0.0,
    eps: float = 1e-6,
    correct_threshold: float = 0.0,
    return_zero_variance: bool = False,
):
    """Advantages and MGPO weights of grouped rewards.

    rewards: [N] float. Groups: ``group_size`` (consecutive blocks of that size; must divide N) or
    ``group_ids`` [N] (any integer labels). estimator: one of ``ESTIMATORS`` (see the module docstring).
    Returns (advantages [N] fp32, weights [N] fp32), the weights being the MGPO factor already applied to
    the advantages; with ``return_zero_variance=True`` also flags [N] bool, True for every sample of a group
    whose rewards are all equal (candidates for dynamic filtering; their GRPO/Dr.GRPO/RLOO advantage is 0).
    """
    if rewards.dim() != 1:
        raise ValueError(f"group_advantages: rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"group_advantages: estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if mgpo_lambda < 0:
        raise ValueError(f"group_advantages: mgpo_lambda must be >= 0, got {mgpo_lambda}")
    n = rewards.shape[0]
    idx = _group_index(n, group_size, group_ids, rewards.device)
    r = rewards.float()
    n_groups = int(idx.max()) + 1 if n else 0

    def per_group_sum(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n_groups, device=r.device, dtype=x.dtype).index_add_(0, idx, x)[idx]

    count = per_group_sum(torch.ones_like(r))
    mean = per_group_sum(r) / count
    centered = r - mean
    if estimator == "grpo":
        std = (per_group_sum(centered.square()) / (count - 1).clamp(min=1)).sqrt()
        adv = centered / (std + eps)
    elif estimator == "dr_grpo":
        adv = centered
    elif estimator == "rloo":
        adv = torch.where(count > 1, centered * count / (count - 1).clamp(min=1), 0.0)
    else:
        adv = (centered - centered.mean()) / (centered.std() + eps) if n > 1 else torch.zeros_like(r)
    p = per_group_sum((r > correct_threshold).float()) / count
    if mgpo_lambda > 0:
        d = torch.xlogy(p, p / 0.5) + torch.xlogy(1 - p, (1 - p) / 0.5)
        weights = torch.exp(-mgpo_lambda * d)
        adv = adv * weights
    else:
        weights = torch.ones_like(r)
    if not return_zero_variance:
        return adv, weights
    gmax = torch.full((n_groups,), -math.inf, device=r.device).scatter_reduce_(0, idx, r, "amax")[idx]
    gmin = torch.full((n_groups,), math.inf, device=r.device).scatter_reduce_(0, idx, r, "amin")[idx]
    return adv, weights, gmax == gmin


def expand_to_tokens(values: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Per-sequence values [B] -> per-token values [T] for packed sequences with cu_seqlens [B+1]."""
    if values.dim() != 1 or cu_seqlens.dim() != 1 or cu_seqlens.shape[0] != values.shape[0] + 1:
        raise ValueError(
            f"expand_to_tokens: values must be [B] and cu_seqlens [B+1], got {tuple(values.shape)} "
            f"and {tuple(cu_seqlens.shape)}"
        )
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int64)
    return torch.repeat_interleave(values, lengths.to(values.device))


__all__ = ["ESTIMATORS", "expand_to_tokens", "group_advantages", "group_advantages_naive"]
