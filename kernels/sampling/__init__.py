"""Fused sampling step: temperature, top-k, top-p, min-p and a seeded draw, with raw and processed logprobs.

Semantics (shared by the torch reference here and the C++ / CUDA twins in csrc/):

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

Implementations, chosen by ``VT_BACKEND`` (see ``_dispatch``): ``sample_reference`` (pure torch, sorts:
the oracle; ``auto`` on CPU tensors), the C++ CPU twin in vt_core._C (``VT_BACKEND=cuda`` on CPU
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
"""

from __future__ import annotations

import torch

from ._dispatch import cuda_launch_args, native, resolve_backend

AVAILABLE = ("torch", "cpp", "cuda")
_PHILOX_M0 = 0xD2511F53
_PHILOX_M1 = 0xCD9E8D57
_PHILOX_W0 = 0x9E3779B9
_PHILOX_W1 = 0xBB67AE85
_MASK32 = 0xFFFFFFFF


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    # a < 2^32 and m < 2^32: the product needs 64 unsigned bits, so split a into 16-bit halves.
    a_lo, a_hi = a & 0xFFFF, a >> 16
    lo_part = a_lo * m
    hi_part = a_hi * m
    lo = (lo_part + ((hi_part & 0xFFFF) << 16)) & _MASK32
    carry = (lo_part + ((hi_part & 0xFFFF) << 16)) >> 32
    hi = ((hi_part >> 16) + carry) & _MASK32
    return hi, lo


def philox4x32(counter: tuple[torch.Tensor, ...], key: tuple[torch.Tensor, torch.Tensor], rounds: int = 10):
    """Philox-4x32 on int64 tensors holding uint32 values; returns the four output words."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(rounds):
        if r:
            k0 = (k0 + _PHILOX_W0) & _MASK32
            k1 = (k1 + _PHILOX_W1) & _MASK32
        hi0, lo0 = _mulhilo(c0, _PHILOX_M0)
        hi1, lo1 = _mulhilo(c2, _PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def philox_uniform(seeds: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """A float64 uniform in [0, 1) per row from (seed, offset): 53 random bits of one Philox block."""
    seeds = seeds.to(torch.int64)
    offsets = offsets.to(torch.int64)
    key = (seeds & _MASK32, (seeds >> 32) & _MASK32)
    zero = torch.zeros_like(offsets)
    counter = (offsets & _MASK32, (offsets >> 32) & _MASK32, zero, zero)
    x0, x1, _, _ = philox4x32(counter, key)
    bits = ((x0 >> 5) << 26) | (x1 >> 6)  # 27 + 26 = 53 bits
    return bits.to(torch.float64) * (1.0 / 9007199254740992.0)


def _keep_top_k(scaled: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    V = scaled.shape[-1]
    k = torch.where((top_k <= 0) | (top_k >= V), torch.full_like(top_k, V), top_k).clamp(min=1)
    kth = torch.sort(scaled, dim=-1, descending=True).values.gather(-1, (k - 1)[:, None])
    return scaled >= kth


def _keep_top_p(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    sorted_p = torch.sort(probs, dim=-1, descending=True).values
    mass_at_or_above = torch.cumsum(sorted_p.double(), dim=-1)
    # first sorted index whose cumulative mass reaches top_p; its probability is the threshold
    reach = (mass_at_or_above >= top_p.double()[:, None]).to(torch.int8).argmax(dim=-1)
    threshold = sorted_p.gather(-1, reach[:, None])
    keep = probs >= threshold
    return torch.where((top_p >= 1.0)[:, None], torch.ones_like(keep), keep)


def sample_reference(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    seeds: torch.Tensor,
    offsets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Torch reference of ``sample``; see the module docstring for the exact semantics."""
    logits = logits.float()
    raw = torch.log_softmax(logits, dim=-1)
    greedy = temperature <= 0
    temp = torch.where(greedy, torch.ones_like(temperature), temperature).float()
    scaled = logits / temp[:, None]
    keep = _keep_top_k(scaled, top_k)
    masked = scaled.masked_fill(~keep, float("-inf"))
    keep &= _keep_top_p(torch.softmax(masked, dim=-1), top_p)
    masked = scaled.masked_fill(~keep, float("-inf"))
    probs = torch.softmax(masked, dim=-1)
    keep &= probs >= (min_p.float()[:, None] * probs.max(dim=-1, keepdim=True).values)
    processed = torch.log_softmax(scaled.masked_fill(~keep, float("-inf")), dim=-1)
    cdf = torch.cumsum(processed.exp().double(), dim=-1)
    u = philox_uniform(seeds, offsets) * cdf[:, -1]
    drawn = torch.searchsorted(cdf, u[:, None], right=True).squeeze(-1).clamp(max=logits.shape[-1] - 1)
    # never land on a dropped token (float64 ties at the top end): step back to the last kept one
    drawn = torch.where(keep.gather(-1, drawn[:, None]).squeeze(-1), drawn,
                        (keep * torch.arange(keep.shape[-1], device=keep.device)).argmax(dim=-1))
    tokens = torch.where(greedy, logits.argmax(dim=-1), drawn)
    raw_lp = raw.gather(-1, tokens[:, None]).squeeze(-1)
    proc_lp = torch.where(greedy, torch.zeros_like(raw_lp), processed.gather(-1, tokens[:, None]).squeeze(-1))
    return tokens, raw_lp, proc_lp


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
        return sample_reference(logits, temperature, top_k, top_p, min_p, seeds, offsets)
    return _sample_native(logits, temperature, top_k, top_p, min_p, seeds, offsets, backend)


def sample_prevalidated(logits, temperature, top_k, top_p, min_p, seeds, offsets):
    """``sample`` without its argument checks, which read values back from the device (a host sync).

    For callers that validated the parameters on the host (the generation engine: ``SamplingParams``) and
    pass [B] tensors on the logits' device: temperature / top_p / min_p float32, top_k / seeds / offsets
    int64. Same backends and results as ``sample``; nothing in it syncs, so it can run inside a CUDA graph.
    """
    backend = resolve_backend("sample", logits, AVAILABLE)
    if backend == "torch":
        return sample_reference(logits, temperature, top_k, top_p, min_p, seeds, offsets)
    return _sample_native(logits, temperature, top_k, top_p, min_p, seeds, offsets, backend)


def _sample_native(logits, temperature, top_k, top_p, min_p, seeds, offsets, backend: str):
    """The C++ twin (``backend="cpp"``) or the CUDA kernel (``"cuda"``): torch allocates, _C fills."""
    B, V = logits.shape
    logits = logits.float().contiguous()
    rows = [t.contiguous() for t in (temperature, top_k, top_p, min_p, seeds, offsets)]
    tokens = torch.empty(B, dtype=torch.int64, device=logits.device)
    raw = torch.empty(B, dtype=torch.float32, device=logits.device)
    processed = torch.empty(B, dtype=torch.float32, device=logits.device)
    pointers = (logits.data_ptr(), B, V, *(t.data_ptr() for t in rows), tokens.data_ptr(), raw.data_ptr(),
                processed.data_ptr())
    if backend == "cuda":
        native().sample_cuda(*pointers, *cuda_launch_args(logits))
    else:
        native().sample_cpu(*pointers)
    return tokens, raw, processed
