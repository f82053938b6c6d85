"""Reward shaping used by the RL stages: the overlong penalty and VibeThinker-3B's zero-sum Long2Short.

Both take rewards and completion lengths (in tokens) as 1-D torch tensors or Python sequences and return
the same kind (a float tensor on the input's device, or a list of floats).

Overlong penalty (soft overlong punishment, linear over the last ``buffer_len`` tokens)::

    penalty(len) = 0                                              if len <= max_len - buffer_len
                 = -coef * (len - (max_len - buffer_len)) / buffer_len   if max_len - buffer_len < len <= max_len
                 = -coef                                           if len > max_len

So the penalty is 0 up to ``max_len - buffer_len``, falls linearly and reaches ``-coef`` at ``max_len``.
``apply_overlong_penalty`` returns ``rewards + penalty``.

Long2Short (zero-sum length shaping among correct answers of a group)::

    for each group g, over its correct answers C_g only:
        s_i   = 1 / len_i
        m     = mean_{j in C_g} s_j
        d     = max_{j in C_g} |s_j - m|
        r'_i  = r_i + lam * (s_i - m) / d        (i in C_g)
    incorrect answers keep r_i; groups with fewer than 2 correct answers, or whose correct answers all
    have the same length (d == 0), are unchanged.

The shaping terms of a group's correct answers sum to 0 (sum_i (s_i - m) = 0), so the group's mean reward
among correct answers is unchanged: shorter correct answers gain up to ``+lam``, longer ones lose up to
``-lam``, and the largest deviation is exactly ``lam`` in magnitude.

Groups are given as ``group_size`` (an int: consecutive blocks, as GRPO lays out n samples per prompt)
or as ``group_ids`` (one integer id per sample, any order), like ``vt_core.kernels.group_advantages``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Values = torch.Tensor | Sequence[float]


def _as_tensor(x: Values, name: str, dtype=torch.float64, device=None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(list(x), device=device)
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    return t.to(dtype=dtype, device=device if device is not None else t.device)


def _like(result: torch.Tensor, template: Values) -> Values:
    if isinstance(template, torch.Tensor):
        out_dtype = template.dtype if template.is_floating_point() else torch.float32
        return result.to(out_dtype)
    return result.tolist()


def overlong_penalty(lengths: Values, max_len: int, buffer_len: int, coef: float = 1.0) -> Values:
    """Per-sample penalty (<= 0) for ``lengths``; formula in the module docstring. Returns floats."""
    if max_len <= 0 or not 0 < buffer_len <= max_len:
        raise ValueError(f"need 0 < buffer_len <= max_len, got buffer_len={buffer_len}, max_len={max_len}")
    lens = _as_tensor(lengths, "lengths")
    excess = (lens - (max_len - buffer_len)).clamp(min=0.0, max=float(buffer_len))
    penalty = -coef * excess / buffer_len
    if isinstance(lengths, torch.Tensor):
        return penalty.to(torch.float32)
    return penalty.tolist()


def apply_overlong_penalty(
    rewards: Values, lengths: Values, max_len: int, buffer_len: int, coef: float = 1.0
) -> Values:
    """``rewards + overlong_penalty(lengths, ...)``, same kind as ``rewards``."""
    r = _as_tensor(rewards, "rewards")
    p = _as_tensor(overlong_penalty(lengths, max_len, buffer_len, coef), "lengths", device=r.device)
    if r.shape != p.shape:
        raise ValueError(f"rewards {tuple(r.shape)} and lengths {tuple(p.shape)} must have the same shape")
    return _like(r + p, rewards)


def _group_index(n: int, group_size: int | None, group_ids: Values | None, device) -> torch.Tensor:
    """Dense group index in [0, G) per sample."""
    if (group_size is None) == (group_ids is None):
        raise ValueError("pass exactly one of group_size and group_ids")
    if group_size is not None:
        if group_size <= 0 or n % group_size:
            raise ValueError(f"group_size={group_size} must be positive and divide the number of samples {n}")
        return torch.arange(n, device=device) // group_size
    ids = _as_tensor(group_ids, "group_ids", dtype=torch.int64, device=device)
    if ids.numel() != n:
        raise ValueError(f"group_ids has {ids.numel()} entries, expected {n}")
    return torch.unique(ids, return_inverse=True)[1]


def long2short(
    rewards: Values,
    lengths: Values,
    group_size: int | None = None,
    group_ids: Values | None = None,
    correct: Values | None = None,
    lam: float = 0.2,
) -> Values:
    """Zero-sum Long2Short shaping (module docstring), vectorized over all groups at once.

    rewards, lengths: [N]; correct: [N] bools (default ``rewards > 0``); returns shaped rewards [N], same
    kind as ``rewards``.
    """
    r = _as_tensor(rewards, "rewards")
    lens = _as_tensor(lengths, "lengths", device=r.device)
    n = r.numel()
    if lens.numel() != n:
        raise ValueError(f"lengths has {lens.numel()} entries, rewards has {n}")
    if bool((lens <= 0).any()):
        raise ValueError("lengths must be positive")
    ok = (r > 0) if correct is None else _as_tensor(correct, "correct", dtype=torch.bool, device=r.device)
    if ok.numel() != n:
        raise ValueError(f"correct has {ok.numel()} entries, rewards has {n}")
    gid = _group_index(n, group_size, group_ids, r.device)
    num_groups = int(gid.max()) + 1 if n else 0
    okf = ok.to(r.dtype)
    s = okf / lens
    count = torch.zeros(num_groups, dtype=r.dtype, device=r.device).index_add_(0, gid, okf)
    total = torch.zeros_like(count).index_add_(0, gid, s)
    mean = total / count.clamp(min=1.0)
    dev = (s - mean[gid]) * okf
    max_dev = torch.zeros_like(count).scatter_reduce_(0, gid, dev.abs(), reduce="amax", include_self=True)
    # "all lengths equal" is decided on the integer lengths, not on max_dev (rounding can make it 1 ulp).
    inf = torch.full_like(count, float("inf"))
    shortest = inf.scatter_reduce(0, gid, torch.where(ok, lens, float("inf")), reduce="amin")
    longest = (-inf).scatter_reduce(0, gid, torch.where(ok, lens, float("-inf")), reduce="amax")
    active = (count >= 2) & (longest > shortest)
    term = torch.where(active[gid] & ok, dev / torch.where(active, max_dev, 1.0)[gid], 0.0)
    return _like(r + lam * term, rewards)
