"""Shared pieces of the fused linear-head ops (``hidden @ weight.T`` never built as [T, V]).

Public names every op folder may use: :class:`TokenStats` (the per-token statistics the losses are built
from), the argument checks (:func:`check_linear_inputs`, :func:`check_stats_args`), the explicit-backend pick
(:func:`pick_backend`) and the gradient-mode choice (``GRAD_MODES``, :func:`wants_fused_grad`). The chunking
base itself (``linear_token_stats`` / ``linear_token_loss``) lives in ``kernels/linear_logprobs/``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from ._dispatch import resolve_backend

GRAD_MODES = ("fused", "recompute")


class TokenStats(NamedTuple):
    """Per-token fp32 statistics at the temperature; ``entropy``/``logit_sum`` are None unless asked for."""

    target_logit: torch.Tensor
    lse: torch.Tensor
    entropy: Optional[torch.Tensor]
    logit_sum: Optional[torch.Tensor]


def pick_backend(op: str, tensor: torch.Tensor, backend: Optional[str]) -> str:
    """``backend`` ("torch" or "triton") when given, else what ``VT_BACKEND`` picks for ``tensor``."""
    if backend is None:
        return resolve_backend(op, tensor)
    if backend not in ("torch", "triton"):
        raise ValueError(f"{op}: backend must be None, 'torch' or 'triton', got {backend!r}")
    return backend


def check_linear_inputs(op: str, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> None:
    """Shared argument checks of the fused linear ops (raise ValueError naming the argument and shape)."""
    if hidden.dim() != 2:
        raise ValueError(f"{op}: hidden must be 2-D [T, D], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"{op}: weight must be [V, D] with D = hidden.shape[1] = {hidden.shape[1]}, got shape {tuple(weight.shape)}"
        )
    if weight.dtype != hidden.dtype or weight.device != hidden.device:
        raise ValueError(
            f"{op}: hidden and weight must share dtype and device, got {hidden.dtype}/{hidden.device} "
            f"and {weight.dtype}/{weight.device}"
        )
    if not hidden.dtype.is_floating_point:
        raise ValueError(f"{op}: hidden must be a floating-point tensor, got {hidden.dtype}")
    if targets.dim() != 1 or targets.shape[0] != hidden.shape[0]:
        raise ValueError(f"{op}: targets must be 1-D [T] with T = {hidden.shape[0]}, got shape {tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"{op}: targets must be an integer tensor, got {targets.dtype}")


def check_stats_args(op, hidden, weight, targets, temperature) -> None:
    """:func:`check_linear_inputs`, a temperature > 0 and targets below V."""
    check_linear_inputs(op, hidden, weight, targets)
    if not temperature > 0:
        raise ValueError(f"{op}: temperature must be > 0, got {temperature}")
    V = weight.shape[0]
    if targets.numel() and int(targets.max()) >= V:
        raise ValueError(f"{op}: targets must be < V = {V}, got max {int(targets.max())}")


def wants_fused_grad(op: str, grad_mode: Optional[str], *tensors: torch.Tensor) -> bool:
    """Whether a scalar loss takes the gradient-in-the-forward path: ``grad_mode`` None (auto) or "fused" when
    autograd will want gradients of ``tensors``; "recompute" never. Without gradients there is nothing to fuse."""
    if grad_mode not in (None, *GRAD_MODES):
        raise ValueError(f"{op}: grad_mode must be None, 'fused' or 'recompute', got {grad_mode!r}")
    return grad_mode != "recompute" and torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
