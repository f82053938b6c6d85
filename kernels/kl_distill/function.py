"""Autograd Function of the fused distillation divergence: per-token divergence [T] from the student's hidden
states and head; the teacher's inputs get no gradient. Gradients of dL/ds: forward q - p; reverse
q (log q - log p - KL); jsd (1 - b) q (log q - log m - KL(q || m)); all times upstream grad / tau."""

from __future__ import annotations

import torch

from .chunked import kl_distill_torch_bwd, kl_distill_torch_fwd
from .fused import kl_distill_bwd, kl_distill_fwd


class LinearKLDistillFunction(torch.autograd.Function):
    """Per-token divergence [T] from (student_hidden, student_weight); teacher inputs get no gradient."""

    @staticmethod
    def forward(ctx, hs, ws, ht, wt, temperature: float, kind: int, beta: float, backend: str):
        hs, ws, ht, wt = (x.contiguous() for x in (hs, ws, ht, wt))
        inv_temp = 1.0 / temperature
        if hs.shape[0] == 0:
            loss = lse_s = lse_t = aux = hs.new_zeros(0, dtype=torch.float32)
        else:
            fwd = kl_distill_fwd if backend == "triton" else kl_distill_torch_fwd
            loss, lse_s, lse_t, aux = fwd(hs, ws, ht, wt, inv_temp, kind, beta)
        ctx.save_for_backward(hs, ws, ht, wt, lse_s, lse_t, aux)
        ctx.args = (inv_temp, kind, beta, backend)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        hs, ws, ht, wt, lse_s, lse_t, aux = ctx.saved_tensors
        inv_temp, kind, beta, backend = ctx.args
        need_dh, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if hs.shape[0] == 0:
            dh = torch.zeros_like(hs) if need_dh else None
            dw = torch.zeros_like(ws) if need_dw else None
        else:
            scale = (grad_loss.float() * inv_temp).contiguous()
            bwd = kl_distill_bwd if backend == "triton" else kl_distill_torch_bwd
            dh, dw = bwd(hs, ws, ht, wt, lse_s, lse_t, aux, scale, inv_temp, kind, beta, need_dh, need_dw)
        return dh, dw, None, None, None, None, None, None
