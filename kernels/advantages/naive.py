"""The readable oracle of ``group_advantages``: one group and one sample at a time, from the estimator definitions."""

from __future__ import annotations

import math

import torch


def group_advantages_naive(rewards, groups, estimator: str = "grpo", mgpo_lambda: float = 0.0, eps: float = 1e-6,
                           correct_threshold: float = 0.0):
    """rewards [N]; groups: lists of sample indices. Returns (advantages [N], weights [N], zero-variance flags [N])."""
    adv = [0.0] * len(rewards)
    weights = [1.0] * len(rewards)
    flags = [False] * len(rewards)
    for members in groups:
        r = [float(rewards[i]) for i in members]
        n = len(r)
        mean = sum(r) / n
        std = math.sqrt(sum((x - mean) ** 2 for x in r) / (n - 1)) if n > 1 else 0.0
        p = sum(x > correct_threshold for x in r) / n
        kl = sum(q * math.log(q / 0.5) for q in (p, 1 - p) if q > 0)
        w = math.exp(-mgpo_lambda * kl)
        for i, x in zip(members, r):
            if estimator == "grpo":
                a = (x - mean) / (std + eps)
            elif estimator == "rloo":
                a = x - (sum(r) - x) / (n - 1) if n > 1 else 0.0
            else:
                a = x - mean
            adv[i], weights[i], flags[i] = a, w, max(r) == min(r)
    if estimator == "reinforce_pp":
        m = sum(adv) / len(adv)
        s = math.sqrt(sum((a - m) ** 2 for a in adv) / (len(adv) - 1))
        adv = [(a - m) / (s + eps) for a in adv]
    return torch.tensor(adv), torch.tensor(weights), torch.tensor(flags)
