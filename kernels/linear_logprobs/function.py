"""Autograd Functions of the linear-token statistics: recompute (:class:`LinearTokenStatsFunction`, any upstream
gradient of the [T] statistics) and gradient in the forward (:class:`LinearTokenLossFunction`, a scalar loss that
is a sum of per-token terms)."""

from __future__ import annotations

import torch

from .._linear import TokenStats
from .chunked import (
    chunk_grads,
    chunk_logits,
    chunk_stats,
    grad_buffers,
    logits_buffer,
    new_stats,
    row_chunks,
    token_stats_backward,
    token_stats_forward,
    upstream,
)


class LinearTokenStatsFunction(torch.autograd.Function):
    """The recompute path: the forward keeps [T] statistics, the backward computes each logits chunk again."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, inv_temp, need_ent, need_sum, backend):
        tgt, lse, ent, lsum = token_stats_forward(hidden, weight, targets, inv_temp, need_ent, need_sum, backend)
        ctx.save_for_backward(hidden, weight, targets, lse, ent)
        ctx.inv_temp, ctx.backend = inv_temp, backend
        ctx.set_materialize_grads(False)
        if not need_ent:
            ctx.mark_non_differentiable(ent)
        if not need_sum:
            ctx.mark_non_differentiable(lsum)
        return tgt, lse, ent, lsum

    @staticmethod
    def backward(ctx, g_tgt, g_lse, g_ent, g_sum):
        hidden, weight, targets, lse, ent = ctx.saved_tensors
        need_dh, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_dh or need_dw) or all(g is None for g in (g_tgt, g_lse, g_ent, g_sum)):
            return None, None, None, None, None, None, None
        g_ent = None if g_ent is None else g_ent.float().contiguous()
        g_sum = None if g_sum is None else g_sum.float().contiguous()
        dh, dw = token_stats_backward(hidden, weight, targets, ctx.inv_temp, lse, ent, upstream(g_tgt, lse),
                           upstream(g_lse, lse), g_ent, g_sum, need_dh, need_dw, ctx.backend)
        return dh, dw, None, None, None, None, None


def _token_loss_grads(token_loss, rows, stats, need_ent, need_sum):
    """(sum of ``token_loss`` over the rows, its gradients with respect to the rows' four statistics)."""
    with torch.enable_grad():
        leaves = [s.detach().requires_grad_() for s in stats]
        view = TokenStats(leaves[0], leaves[1], leaves[2] if need_ent else None, leaves[3] if need_sum else None)
        loss = token_loss(view, rows).sum()
        if not loss.requires_grad:
            return loss.detach(), [None] * 4
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return loss.detach(), [None if g is None else g.float().contiguous() for g in grads]


class LinearTokenLossFunction(torch.autograd.Function):
    """Gradient in the forward: each logits chunk, once its statistics and their per-token loss gradients are
    known, becomes d(loss)/d(logits) right away, so the backward only scales dh/dw by the incoming scalar."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, inv_temp, need_ent, need_sum, token_loss, backend):
        dh, dw = grad_buffers(hidden, weight, backend, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        stats = new_stats(hidden)
        loss = torch.zeros((), device=hidden.device, dtype=torch.float32)
        chunks = row_chunks(hidden, weight.shape[0], backend)
        buf = logits_buffer(hidden, weight, backend, chunks)
        for t0, t1 in chunks:
            rows = slice(t0, t1)
            x, hs = chunk_logits(backend, hidden, weight, t0, t1, inv_temp, buf)
            tgt, lse, ent, lsum = (s[rows] for s in stats)
            chunk_stats(backend, x, targets[rows], inv_temp, tgt, lse, ent, lsum, need_ent, need_sum)
            part, (g_tgt, g_lse, g_ent, g_sum) = _token_loss_grads(token_loss, rows, (tgt, lse, ent, lsum),
                                                                   need_ent, need_sum)
            loss += part
            chunk_grads(backend, x, hs, weight, targets[rows], inv_temp, lse, ent, upstream(g_tgt, lse),
                         upstream(g_lse, lse), g_ent, g_sum, None if dh is None else dh[rows], dw, t0 == 0)
        ctx.grads = (dh, dw)
        ctx.dtype = hidden.dtype
        ctx.mark_non_differentiable(*stats)
        return (loss, *stats)

    @staticmethod
    def backward(ctx, g_loss, *_):
        grads, ctx.grads = ctx.grads, None
        scale = None if bool(g_loss == 1) else g_loss.float()
        out = []
        for g in grads:
            if g is not None and scale is not None:
                g = g.mul_(scale) if g.dtype == torch.float32 else g.float().mul_(scale)
            out.append(None if g is None else g.to(ctx.dtype))
        return (*out, None, None, None, None, None, None)
