"""The pure-torch path of ``sample`` (the CPU path and the bench baseline) and its Philox-4x32-10 stream.

It sorts (the native twins never do); see the package docstring for the exact semantics.
"""

from __future__ import annotations

import torch

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


def keep_top_k(scaled: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """[B, V] bool: tokens whose scaled logit is >= the row's k-th largest (tie-inclusive; k <= 0 or >= V: all)."""
    V = scaled.shape[-1]
    k = torch.where((top_k <= 0) | (top_k >= V), torch.full_like(top_k, V), top_k).clamp(min=1)
    kth = torch.sort(scaled, dim=-1, descending=True).values.gather(-1, (k - 1)[:, None])
    return scaled >= kth


def keep_top_p(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """[B, V] bool: tokens at or above the largest probability threshold whose mass reaches top_p."""
    sorted_p = torch.sort(probs, dim=-1, descending=True).values
    mass_at_or_above = torch.cumsum(sorted_p.double(), dim=-1)
    # first sorted index whose cumulative mass reaches top_p; its probability is the threshold
    reach = (mass_at_or_above >= top_p.double()[:, None]).to(torch.int8).argmax(dim=-1)
    threshold = sorted_p.gather(-1, reach[:, None])
    keep = probs >= threshold
    return torch.where((top_p >= 1.0)[:, None], torch.ones_like(keep), keep)


def sample_torch(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    seeds: torch.Tensor,
    offsets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pure-torch path of ``sample`` (the CPU path); see the module docstring for the exact semantics."""
    logits = logits.float()
    raw = torch.log_softmax(logits, dim=-1)
    greedy = temperature <= 0
    temp = torch.where(greedy, torch.ones_like(temperature), temperature).float()
    scaled = logits / temp[:, None]
    keep = keep_top_k(scaled, top_k)
    masked = scaled.masked_fill(~keep, float("-inf"))
    keep &= keep_top_p(torch.softmax(masked, dim=-1), top_p)
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
