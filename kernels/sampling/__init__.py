"""Fused sampling step: temperature, top-k, top-p, min-p and a seeded draw, with raw and processed logprobs.

Semantics (shared by the torch path ``sample_torch`` and the C++ / CUDA twins in csrc/):

1. raw logprobs: ``log_softmax(logits)`` at temperature 1, fp32; ``temperature == 0`` means greedy.
2. scaled = logits / temperature; top-k keeps tokens whose scaled logit is >= the k-th largest
   (ties at the boundary are all kept, so no sort order is needed); top-p keeps the tokens whose
   probability is >= the largest threshold t with mass(p >= t) >= top_p (again tie-inclusive);
   min-p keeps tokens with p >= min_p * max(p). Filters apply in that order, each on the renormalised
   result of the previous one. processed logprobs are the log of the renormalised kept distribution.
3. The draw is an inverse-CDF over the kept tokens in vocabulary order, accumulated in float64, with
   u in [0, 1) from Philox-4x32-10 keyed by the row's 64-bit seed and counted by its ``offset`` (the
   index of the token being generated). The same (seed, offset) gives the same token whatever else
   is in the batch.

Implementations, chosen by ``VT_BACKEND`` (see ``_dispatch``): ``sample_torch`` (``chunked.py``; pure torch, sorts;
``auto`` on CPU tensors), the C++ CPU twin in vt_core._C (``native.py``; ``VT_BACKEND=cpp`` on CPU
tensors) and the CUDA kernel (``auto`` or ``cuda`` on CUDA tensors; one thread block per row). The
native twins never sort: radix selects on float bit patterns find the top-k and top-p thresholds.
They compute the same float32 quantities as the reference with their own summation order (float64 for
every mass) and ``expf``; none of the three can match another bit for bit (torch's float32 softmax alone
is off from float64 by up to ~4e-7 of mass at V = 152K). The bound they keep: each draw is the float64
draw of its row, or one that rounding explains: a top-p crossing moved by at most 1e-6 of mass, a min-p
cut by 1e-6 relative, the sampling point by 2e-7 of the kept mass (tests/kernels/test_sampling_native.py
checks every token of the twins and of the reference against it). On the inputs where the first H200 run
saw the CUDA kernel differ (1 of 64 rows at top-p 0.8, and at T = 5, top-p 0.999, V = 152064), the C++
twin differs from the reference on the same rows, draws the float64 token there, and the reference is
the one whose top-p crossing moved.

Files by role: ``chunked.py`` (the torch path ``sample_torch`` and its Philox stream), ``native.py`` (the
vt_core._C wrapper ``sample_native``: C++ twin and CUDA kernel), ``naive.py`` (the readable float64 oracle of the
sampled distribution, ``sample_distribution_naive``). There is no Triton kernel.
"""

from __future__ import annotations

import torch

from .._dispatch import resolve_backend
from .chunked import keep_top_k, keep_top_p, philox4x32, philox_uniform, sample_torch
from .naive import sample_distribution_naive
from .native import sample_native

AVAILABLE = ("torch", "cpp", "cuda")


def _as_row_tensor(value, B: int, dtype: torch.dtype, device, name: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=dtype, device=device)
    if t.dim() == 0:
        t = t.expand(B)
    if t.shape != (B,):
        raise ValueError(f"sample: {name} must be a scalar or shape [{B}], got {tuple(t.shape)}")
    return t


def sample(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seeds=0, offsets=0):
    """Draw one token per row.

    logits: [B, V] (any float dtype). temperature / top_k / top_p / min_p / seeds / offsets: scalars or
    [B] tensors (top_k <= 0 or >= V disables it; top_p = 1 and min_p = 0 disable those; temperature 0
    is greedy). Returns (tokens int64 [B], raw_logprobs fp32 [B], processed_logprobs fp32 [B]).
    """
    if logits.dim() != 2 or logits.shape[1] == 0:
        raise ValueError(f"sample: logits must be [B, V] with V >= 1, got shape {tuple(logits.shape)}")
    if not logits.dtype.is_floating_point:
        raise ValueError(f"sample: logits must be a float tensor, got {logits.dtype}")
    B, dev = logits.shape[0], logits.device
    temperature = _as_row_tensor(temperature, B, torch.float32, dev, "temperature")
    top_k = _as_row_tensor(top_k, B, torch.int64, dev, "top_k")
    top_p = _as_row_tensor(top_p, B, torch.float32, dev, "top_p")
    min_p = _as_row_tensor(min_p, B, torch.float32, dev, "min_p")
    seeds = _as_row_tensor(seeds, B, torch.int64, dev, "seeds")
    offsets = _as_row_tensor(offsets, B, torch.int64, dev, "offsets")
    if B and (bool((top_p <= 0).any()) or bool((top_p > 1).any())):
        raise ValueError("sample: top_p must be in (0, 1]")
    if B and (bool((min_p < 0).any()) or bool((min_p > 1).any())):
        raise ValueError("sample: min_p must be in [0, 1]")
    backend = resolve_backend("sample", logits, AVAILABLE)
    if backend == "torch":
        return sample_torch(logits, temperature, top_k, top_p, min_p, seeds, offsets)
    return sample_native(logits, temperature, top_k, top_p, min_p, seeds, offsets, backend)


def sample_prevalidated(logits, temperature, top_k, top_p, min_p, seeds, offsets):
    """``sample`` without its argument checks, which read values back from the device (a host sync).

    For callers that validated the parameters on the host (the generation engine: ``SamplingParams``) and
    pass [B] tensors on the logits' device: temperature / top_p / min_p float32, top_k / seeds / offsets
    int64. Same backends and results as ``sample``; nothing in it syncs, so it can run inside a CUDA graph.
    """
    backend = resolve_backend("sample", logits, AVAILABLE)
    if backend == "torch":
        return sample_torch(logits, temperature, top_k, top_p, min_p, seeds, offsets)
    return sample_native(logits, temperature, top_k, top_p, min_p, seeds, offsets, backend)


# Public alias kept for users: the name vt_core.kernels.__all__ has always exported.
sample_reference = sample_torch

__all__ = [
    "AVAILABLE",
    "keep_top_k",
    "keep_top_p",
    "philox4x32",
    "philox_uniform",
    "sample",
    "sample_distribution_naive",
    "sample_native",
    "sample_prevalidated",
    "sample_reference",
    "sample_torch",
]
