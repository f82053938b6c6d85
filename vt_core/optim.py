"""Optimizer and learning-rate schedule used by every stage.

- ``lr_at``: linear warmup to the peak, cosine decay down to a floor (``min_lr_ratio`` of the peak).
- ``MasterAdamW``: AdamW whose state and update live in fp32 even when the model computes in bf16:
  each low-precision parameter gets an fp32 master copy; gradients are upcast into it, the step runs
  there, and the result is cast back. With fp32 parameters it is plain ``torch.optim.AdamW``.
  (Under FSDP2 the parameters are kept in fp32 and ``MixedPrecisionPolicy`` casts them for compute,
  so the master copy is the sharded parameter itself.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def lr_at(step: int, *, peak_lr: float, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.1) -> float:
    """Learning rate at optimizer step ``step`` (0-based): warmup, then cosine down to ``min_lr_ratio * peak_lr``."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    floor = peak_lr * min_lr_ratio
    return floor + (peak_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class MasterAdamW:
    """AdamW with fp32 master weights for low-precision parameters.

    ``step()`` copies each parameter's gradient into its fp32 master, clips the global gradient norm
    (when ``max_grad_norm`` is set) and returns it, runs AdamW on the masters, and writes them back.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.0,
        eps: float = 1e-8,
    ):
        self.params = [p for p in params if p.requires_grad]
        self.masters = [
            p if p.dtype == torch.float32 else p.detach().float().clone().requires_grad_(True) for p in self.params
        ]
        self.inner = torch.optim.AdamW(self.masters, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)

    @property
    def param_groups(self) -> list[dict]:
        return self.inner.param_groups

    def set_lr(self, lr: float) -> None:
        for group in self.inner.param_groups:
            group["lr"] = lr

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None
        for m in self.masters:
            m.grad = None

    @torch.no_grad()
    def step(self, max_grad_norm: float | None = None) -> float:
        """One update; returns the global gradient norm before clipping (inf/nan when not finite)."""
        for p, m in zip(self.params, self.masters):
            if m is not p:
                m.grad = None if p.grad is None else p.grad.float()
        grads = [m for m in self.masters if m.grad is not None]
        if max_grad_norm is not None and max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(grads, max_grad_norm)
        else:
            norm = torch.nn.utils.get_total_norm([m.grad for m in grads]) if grads else torch.zeros(())
        self.inner.step()
        for p, m in zip(self.params, self.masters):
            if m is not p:
                p.copy_(m)
        return float(norm)

    def state_dict(self) -> dict:
        return {"inner": self.inner.state_dict(), "masters": [m.detach().clone() for m in self.masters]}

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state["inner"])
        with torch.no_grad():
            for p, m, saved in zip(self.params, self.masters, state["masters"]):
                m.copy_(saved)
                if m is not p:
                    p.copy_(m)


__all__ = ["lr_at", "MasterAdamW"]
