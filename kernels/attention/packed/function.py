"""Packed attention, autograd: the Triton kernels of ``fused.py`` wired as a differentiable function."""

from __future__ import annotations

import math

import torch

from .fused import packed_attention_bwd, packed_attention_fwd


class PackedAttentionFunction(torch.autograd.Function):
    """Autograd wiring of the Triton varlen kernels (inputs already checked and made contiguous)."""

    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, max_seqlen, causal, softmax_scale, window):
        o, lse = packed_attention_fwd(q, k, v, cu_seqlens, max_seqlen, causal, softmax_scale, window)
        ctx.save_for_backward(q, k, v, o, lse, cu_seqlens)
        ctx.args = (max_seqlen, causal, softmax_scale, window)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, cu_seqlens = ctx.saved_tensors
        dq, dk, dv = packed_attention_bwd(do.contiguous(), q, k, v, o, lse, cu_seqlens, *ctx.args)
        return dq, dk, dv, None, None, None, None, None


def packed_attention_fused(q, k, v, cu_seqlens, max_seqlen, causal=True, softmax_scale=None, window=None):
    """Triton path of ``packed_attention`` (see there for shapes and semantics)."""
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    return PackedAttentionFunction.apply(
        q.contiguous(), k.contiguous(), v.contiguous(), cu_seqlens.to(torch.int32).contiguous(),
        int(max_seqlen), causal, float(scale), window,
    )
