"""Per-token statistics of ``softmax(hidden @ weight.T / temperature)`` without a [T, V] logits tensor.

One fused op, :func:`linear_token_stats`, returns for every token (all fp32, at the temperature):

- ``target_logit``  z[t, y_t] (0 where the target is negative, i.e. "no target"),
- ``lse``           logsumexp_v z[t, v],
- ``entropy``       -sum_v p log p (optional),
- ``logit_sum``     sum_v z[t, v] (optional; label smoothing needs it),

and its backward takes the upstream gradients of those [T] statistics and produces the gradients of
``hidden`` [T, D] and ``weight`` [V, D]. :func:`linear_logprobs`, ``linear_cross_entropy`` and
``linear_rl_loss`` are [T]-sized torch math on top of it, with autograd carrying [T] gradients back here.

Two backends, both bounded in memory, share one structure: tokens go in chunks of ``Tc`` rows; per chunk one
GEMM gives the logits chunk ``h_c @ W.T`` [Tc, V], a reduction pass gives the rows' statistics, and for
gradients the chunk is overwritten in place with d(loss)/d(logits) and two more GEMMs give the chunk's rows
of d hidden (``dlogits @ W``) and its share of d weight (``dlogits.T @ h_c``). Peak extra memory is one
[Tc, V] chunk plus [T] statistics.

- Triton (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``): the GEMMs run on the vendor BLAS in the
  input dtype (fp32 accumulation); Triton kernels do the passes between them (an online logsumexp over
  vocab tiles; the in-place logits gradient). Tc is chosen per device so that a chunk stays near
  ``fused.CHUNK_BYTES``. In half precision the weight gradient is summed over token chunks in the weight's dtype
  (no fp32 [V, D] buffer), as the un-fused torch graph's own per-GEMM rounding would.
- torch (``chunked.py``: the CPU path and the bench's chunked baseline): fp32 chunks of
  ``chunked.TORCH_TOKEN_CHUNK`` rows (a fixed count: ``vt_core.generation.exact`` pads batches by it for
  per-row bitwise invariance) times the whole vocabulary, one GEMM each for fp32 weights (wide GEMMs use a CPU
  core better than vocabulary tiles do); half weights are converted to fp32 ``chunked.TORCH_VOCAB_CHUNK`` rows
  at a time, and the elementwise passes walk vocabulary tiles of that width so their temporaries stay small.

Two ways to get gradients:

- recompute (:func:`linear_token_stats`, any upstream gradient of the [T] statistics): the forward keeps
  only [T] statistics; the backward computes each logits chunk again. Forward + backward = 4 GEMMs per
  chunk (8 T D V flops). Used by :func:`linear_logprobs` and by the no-grad scoring path.
- gradient in the forward (:func:`linear_token_loss`, a scalar loss that is a sum of per-token terms, each
  a function of its own token's statistics): once a chunk's statistics are known, the terms' gradients for
  those rows are known too, so the chunk becomes its logits gradient at once and the backward only scales
  the stored d hidden / d weight by the incoming scalar. 3 GEMMs per chunk (6 T D V flops), no second
  pass over the vocabulary; the gradient buffers (the size of the inputs' gradients) exist from the
  forward on. The losses pick it automatically when gradients are needed (``grad_mode``).

Gradient of the statistics with respect to the scaled logits z = x / temperature, used by both paths:
d lse / dz_v = p_v;  d target / dz_v = [v = y];  d sum / dz_v = 1;  d entropy / dz_v = -p_v (z_v - lse + H).

Files by role: ``fused.py`` (the Triton kernels ``linear_logprobs_fwd_kernel`` / ``linear_logprobs_bwd_kernel``, their
per-chunk launchers and ``CUDA_LAUNCH``), ``chunked.py`` (the chunk loop both backends share and its pure-torch
passes), ``function.py`` (``LinearTokenStatsFunction``, ``LinearTokenLossFunction``), ``naive.py`` (the readable
float64 oracle, ``linear_logprobs_naive`` / ``linear_token_stats_naive``). The argument checks, the backend pick
and :class:`TokenStats` are shared with the other linear-head ops in ``kernels/_linear.py``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .._linear import GRAD_MODES, TokenStats, check_linear_inputs, check_stats_args, pick_backend, wants_fused_grad
from .chunked import TORCH_TOKEN_CHUNK, TORCH_VOCAB_CHUNK
from .function import LinearTokenLossFunction, LinearTokenStatsFunction
from .naive import linear_logprobs_naive, linear_token_stats_naive



def linear_token_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    entropy: bool = False,
    logit_sum: bool = False,
    backend: Optional[str] = None,
) -> TokenStats:
    """Fused per-token softmax statistics of ``hidden @ weight.T / temperature``, never building [T, V].

    hidden: [T, D] float (fp32/fp16/bf16); weight: [V, D], same dtype and device;
    targets: [T] integer in [0, V), or negative for "no target" (its target_logit is 0).
    Returns :class:`TokenStats` of fp32 [T] tensors, differentiable with respect to hidden and weight.
    ``backend`` overrides ``VT_BACKEND`` ("torch" or "triton").
    """
    op = "linear_token_stats"
    check_stats_args(op, hidden, weight, targets, temperature)
    chosen = pick_backend(op, hidden, backend)
    tgt, lse, ent, lsum = LinearTokenStatsFunction.apply(
        hidden.contiguous(), weight.contiguous(), targets.to(torch.int64).contiguous(),
        1.0 / float(temperature), bool(entropy), bool(logit_sum), chosen,
    )
    return TokenStats(tgt, lse, ent if entropy else None, lsum if logit_sum else None)


def linear_token_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    token_loss: Callable[[TokenStats, slice], torch.Tensor],
    temperature: float = 1.0,
    entropy: bool = False,
    logit_sum: bool = False,
    backend: Optional[str] = None,
    grad_mode: Optional[str] = None,
) -> tuple[torch.Tensor, TokenStats]:
    """A scalar loss ``sum_t token_loss(stats, rows)[t]`` over the fused statistics, with its gradient taken in
    the forward where that pays (see the module docstring).

    hidden, weight, targets, temperature, entropy, logit_sum, backend: as :func:`linear_token_stats`.
    token_loss(stats, rows): given the :class:`TokenStats` of the token rows ``rows`` (a slice of range(T)),
    returns their [n] loss terms, differentiable in the statistics. A row's term may depend only on that
    row's statistics (and on fixed per-token data the callable indexes with ``rows``): the fused path calls
    it chunk by chunk. grad_mode: None (auto: "fused" when autograd needs gradients of hidden or weight),
    "fused" or "recompute" (:func:`linear_token_stats`, then token_loss over all rows); both give the same
    loss and gradients up to fp32 rounding.
    Returns (loss, stats): a 0-d fp32 loss differentiable w.r.t. hidden and weight, and the detached fp32
    [T] statistics (for metrics).
    """
    op = "linear_token_loss"
    fused = wants_fused_grad(op, grad_mode, hidden, weight)
    if not fused:
        stats = linear_token_stats(hidden, weight, targets, temperature, entropy, logit_sum, backend)
        loss = token_loss(stats, slice(0, hidden.shape[0])).sum()
        return loss, TokenStats(*(None if s is None else s.detach() for s in stats))
    check_stats_args(op, hidden, weight, targets, temperature)
    loss, tgt, lse, ent, lsum = LinearTokenLossFunction.apply(
        hidden.contiguous(), weight.contiguous(), targets.to(torch.int64).contiguous(), 1.0 / float(temperature),
        bool(entropy), bool(logit_sum), token_loss, pick_backend(op, hidden, backend),
    )
    return loss, TokenStats(tgt, lse, ent if entropy else None, lsum if logit_sum else None)


def linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    return_entropy: bool = False,
    backend: Optional[str] = None,
):
    """Log-probability of each target token under ``softmax(hidden @ weight.T / temperature)``.

    hidden: [T, D]; weight: [V, D] (the LM head); targets: [T] integer in [0, V).
    Returns logprobs [T] fp32, or (logprobs [T], entropy [T]) with ``return_entropy``; both differentiable
    with respect to hidden and weight. Under ``torch.no_grad()`` nothing is saved for backward (the path
    used to score rollouts with the old / reference policy).
    """
    if targets.numel() and int(targets.min()) < 0:
        raise ValueError(f"linear_logprobs: targets must be >= 0, got min {int(targets.min())}")
    stats = linear_token_stats(hidden, weight, targets, temperature, entropy=return_entropy, backend=backend)
    logprobs = stats.target_logit - stats.lse
    return (logprobs, stats.entropy) if return_entropy else logprobs


def linear_logprobs_torch(hidden, weight, targets, temperature: float = 1.0, return_entropy: bool = False):
    """The chunked pure-torch path of :func:`linear_logprobs` (``chunked.py``) whatever ``VT_BACKEND`` says:
    the production CPU path and the bench baseline."""
    return linear_logprobs(hidden, weight, targets, temperature, return_entropy, backend="torch")


# Public alias kept for users: the name vt_core.kernels.__all__ has always exported.
linear_logprobs_reference = linear_logprobs_torch

__all__ = [
    "GRAD_MODES",
    "TORCH_TOKEN_CHUNK",
    "TORCH_VOCAB_CHUNK",
    "LinearTokenLossFunction",
    "LinearTokenStatsFunction",
    "TokenStats",
    "check_linear_inputs",
    "linear_logprobs",
    "linear_logprobs_naive",
    "linear_logprobs_reference",
    "linear_logprobs_torch",
    "linear_token_loss",
    "linear_token_stats",
    "linear_token_stats_naive",
    "wants_fused_grad",
]
