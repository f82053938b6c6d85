"""The readable oracle of ``linear_kl_distill``: straight from the maths, building both [T, V] logits tensors.

The logits are taken in the inputs' dtype, the rest in float64 for float64 inputs (the tests' oracle) and in fp32
otherwise (what plain PyTorch in that dtype gets). Differentiable in every input.
"""

from __future__ import annotations

import torch


def linear_kl_distill_naive(hs, ws, ht, wt, mask, temperature: float = 1.0, kind: str = "forward",
                            beta: float = 0.5) -> torch.Tensor:
    """Per-token divergence [T] of the student (hs @ ws.T) from the teacher (ht @ wt.T), times ``mask`` [T]."""
    acc = torch.float64 if hs.dtype == torch.float64 else torch.float32
    lq = torch.log_softmax((hs @ ws.t()).to(acc) / temperature, -1)
    lp = torch.log_softmax((ht @ wt.t()).to(acc) / temperature, -1)
    p, q = lp.exp(), lq.exp()
    if kind == "forward":
        d = (p * (lp - lq)).sum(-1)
    elif kind == "reverse":
        d = (q * (lq - lp)).sum(-1)
    else:
        m = beta * p + (1 - beta) * q
        d = beta * (p * (lp - m.log())).sum(-1) + (1 - beta) * (q * (lq - m.log())).sum(-1)
    return d * mask.to(acc)
