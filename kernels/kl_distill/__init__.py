"""Fused linear distillation KL: KL / JSD between a teacher's and a student's token distributions,
computed from hidden states and LM-head weights without ever building either [T, V] logits tensor.

Conventions (``tau`` = temperature, ``p`` = teacher, ``q`` = student, per token):

- ``s = (student_hidden @ student_weight.T) / tau``, ``t = (teacher_hidden @ teacher_weight.T) / tau``,
  ``q = softmax(s)``, ``p = softmax(t)`` over the vocabulary.
- ``kind="forward"``: KL(p || q) = sum_v p (log p - log q)   (mode covering; classic distillation).
- ``kind="reverse"``: KL(q || p) = sum_v q (log q - log p)   (mode seeking).
- ``kind="jsd"``: with ``b = jsd_beta`` and the mixture ``m = b p + (1 - b) q``,
  JSD_b = b KL(p || m) + (1 - b) KL(q || m); ``b = 0.5`` is the usual Jensen-Shannon divergence (<= log 2).
- The loss is NOT multiplied by tau**2 (Hinton et al. do that to keep gradient scale across temperatures);
  multiply by ``temperature ** 2`` yourself if you want that convention.
- Only the student gets gradients (to its hidden states and head weight); the teacher is treated as constant.

Files by role: ``fused.py`` (Triton kernels ``kl_distill_fwd_kernel``, ``kl_distill_jsd_fwd_kernel``,
``kl_distill_bwd_kernel``, launchers and ``CUDA_LAUNCH``), ``chunked.py`` (the pure-torch path, the CPU path),
``function.py`` (``LinearKLDistillFunction``), ``naive.py`` (the readable oracle, ``linear_kl_distill_naive``).

Why this op is not built on the shared linear-token base (``linear_token_loss`` in ``kernels/linear_logprobs``):
that base reduces ONE [Tc, V] logits chunk to four [T] statistics per token (target logit, lse, entropy, logit
sum) and hands them to a per-token hook. KL(p || q) = sum_v p_v (t_v - s_v) - lse_t + lse_s needs the cross sum
over v of the teacher's and the student's logits together, which no statistic of one row gives, so the hook
cannot express it; the base would need a second (teacher) logits chunk and a new two-row reduction pass. In
numbers (Qwen2.5 head V = 151,936, bf16, T = 8192 tokens, H200 with 132 SMs): the base's chunk is 512 MiB
(1664 rows), two of them 1 GiB of extra forward memory; the kernels here do both GEMMs in registers, so the
forward's extra memory is [5, splits, T] fp32 = 5 x 5 x 8192 x 4 B = 800 KiB. The base's gradient-in-the-forward
would do 2 T V (Ds + Dt) + 4 T V Ds flops against 4 T V (Ds + Dt) + 4 T V Ds here (8 against 12 T V D at
Ds = Dt), so a port trades 1 GiB for a third of the flops; it replaces these kernels and needs a GPU measurement
first. ``backend`` works as in the other ops; ``grad_mode`` accepts only "recompute" (the logits tiles are
recomputed in the backward; "fused" would need those [Tc, V] chunks).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .._linear import pick_backend
from .function import LinearKLDistillFunction
from .naive import linear_kl_distill_naive

KINDS = {"forward": 0, "reverse": 1, "jsd": 2}
REDUCTIONS = ("mean", "sum", "none")


def linear_kl_distill(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    loss_mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    kind: str = "forward",
    reduction: str = "mean",
    jsd_beta: float = 0.5,
    backend: Optional[str] = None,
    grad_mode: Optional[str] = None,
) -> torch.Tensor:
    """Distillation divergence between teacher and student next-token distributions, without [T, V] logits.

    Shapes: student_hidden [T, Ds], student_weight [V, Ds], teacher_hidden [T, Dt], teacher_weight [V, Dt]
    (Ds and Dt may differ; all four share one floating dtype and device), loss_mask [T] (bool, or float
    per-token weights w; None = every token with weight 1).

    ``kind``: "forward" = KL(teacher || student), "reverse" = KL(student || teacher), "jsd" =
    jsd_beta * KL(teacher || M) + (1 - jsd_beta) * KL(student || M) with M = jsd_beta * teacher +
    (1 - jsd_beta) * student, 0 < jsd_beta < 1. Both distributions are softmax(logits / temperature); the
    loss is not multiplied by temperature**2.

    ``reduction``: "mean" -> sum_t w_t D_t / sum_t w_t (0 when every token is masked), "sum" -> sum_t w_t D_t,
    "none" -> [T] fp32 with w_t D_t (0 at masked tokens). Returns an fp32 tensor.

    Gradients flow to student_hidden and student_weight only; the teacher is treated as a constant.
    Tokens with weight 0 are dropped before the kernels run (they cost nothing). ``backend`` overrides
    ``VT_BACKEND`` ("torch" or "triton"); grad_mode: None or "recompute" (the only gradient path; see the module
    docstring).
    """
    name = "linear_kl_distill"
    if student_hidden.dim() != 2 or student_weight.dim() != 2:
        raise ValueError(f"{name}: student_hidden must be [T, Ds] and student_weight [V, Ds]; got "
                         f"{tuple(student_hidden.shape)} and {tuple(student_weight.shape)}")
    if teacher_hidden.dim() != 2 or teacher_weight.dim() != 2:
        raise ValueError(f"{name}: teacher_hidden must be [T, Dt] and teacher_weight [V, Dt]; got "
                         f"{tuple(teacher_hidden.shape)} and {tuple(teacher_weight.shape)}")
    T, Ds = student_hidden.shape
    V = student_weight.shape[0]
    if student_weight.shape[1] != Ds:
        raise ValueError(f"{name}: student_weight {tuple(student_weight.shape)} must be [V, Ds] with Ds={Ds} "
                         f"from student_hidden {tuple(student_hidden.shape)}")
    if teacher_hidden.shape[0] != T:
        raise ValueError(f"{name}: teacher_hidden {tuple(teacher_hidden.shape)} must have T={T} rows like "
                         f"student_hidden {tuple(student_hidden.shape)}")
    if teacher_weight.shape != (V, teacher_hidden.shape[1]):
        raise ValueError(f"{name}: teacher_weight {tuple(teacher_weight.shape)} must be [V, Dt] = "
                         f"[{V}, {teacher_hidden.shape[1]}]")
    tensors = (student_hidden, student_weight, teacher_hidden, teacher_weight)
    if not student_hidden.dtype.is_floating_point or any(x.dtype != student_hidden.dtype for x in tensors):
        raise ValueError(f"{name}: hidden states and weights must share one floating dtype; got "
                         f"{[str(x.dtype) for x in tensors]}")
    if any(x.device != student_hidden.device for x in tensors):
        raise ValueError(f"{name}: all inputs must be on one device; got {[str(x.device) for x in tensors]}")
    if loss_mask is None:
        loss_mask = torch.ones(T, dtype=torch.bool, device=student_hidden.device)
    if loss_mask.shape != (T,):
        raise ValueError(f"{name}: loss_mask must be [T] = [{T}], got {tuple(loss_mask.shape)}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"{name}: temperature must be a finite number > 0, got {temperature!r}")
    if kind not in KINDS:
        raise ValueError(f"{name}: kind must be one of {tuple(KINDS)}, got {kind!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if kind == "jsd" and not 0.0 < jsd_beta < 1.0:
        raise ValueError(f"{name}: jsd_beta must be in (0, 1), got {jsd_beta!r}")

    if grad_mode not in (None, "recompute"):
        raise ValueError(f"{name}: grad_mode must be None or 'recompute' (the logits are recomputed in the backward; "
                         f"there is no gradient-in-the-forward path for two heads), got {grad_mode!r}")
    backend = pick_backend(name, student_hidden, backend)
    mask = loss_mask.to(student_hidden.device)
    weights = mask.float()
    keep = torch.nonzero(mask != 0).squeeze(1)
    if keep.numel() == T:
        hs, ht, w = student_hidden, teacher_hidden, weights
    else:
        hs, ht, w = student_hidden.index_select(0, keep), teacher_hidden.index_select(0, keep), weights[keep]
    per_token = LinearKLDistillFunction.apply(hs, student_weight, ht.detach(), teacher_weight.detach(),
                                              float(temperature), KINDS[kind], float(jsd_beta), backend)
    weighted = per_token * w
    if reduction == "none":
        if keep.numel() == T:
            return weighted
        return weighted.new_zeros(T).index_copy(0, keep, weighted)
    total = weighted.sum()
    if reduction == "sum":
        return total
    return total / w.sum() if keep.numel() else total


__all__ = ["KINDS", "REDUCTIONS", "LinearKLDistillFunction", "linear_kl_distill", "linear_kl_distill_naive"]
