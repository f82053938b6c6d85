"""The engine's sampling step: ``vt_core.kernels.sample`` semantics, with sort-free paths for common rows.

``sample`` (the torch reference of the fused kernel) sorts every row twice (top-k, then top-p) whatever
the row's parameters. Most RL rows use neither: this module routes each row by its own parameters to

- greedy rows (temperature 0): argmax and the raw logprob, no RNG;
- untruncated rows (top-k off, top-p = 1; min-p allowed): the reference's own formulas without the sorts;
- truncated rows: ``sample`` itself.

Each path computes, for its rows, the same float operations as ``sample`` does for them (a filter that
keeps every token is skipped, which leaves the values unchanged), so tokens and both logprobs are
bitwise those of ``sample`` (tests/test_engine.py checks it), and a row's result still depends only on
its own logits, parameters, seed and offset. :func:`draw` is the engine's entry: it sends CUDA logits to the
fused sampling kernel and routes CPU rows as above.
"""

from __future__ import annotations

import torch

from vt_core.generation.graphs import to_device
from vt_core.kernels import sample
from vt_core.kernels.sampling import philox_uniform, sample_prevalidated

UNIFORMS_AHEAD = 64  # Philox uniforms computed per sample at once (one RNG call per 64 tokens instead of per token)


def _untruncated(logits, temperature, min_p, u):
    logits = logits.float()
    raw = torch.log_softmax(logits, dim=-1)
    unit = bool((temperature == 1).all())  # x / 1 is x: the scaled row is the row, processed is raw
    scaled = logits if unit else logits / temperature.float()[:, None]
    if bool((min_p > 0).any()):
        probs = torch.softmax(scaled, dim=-1)
        keep = probs >= (min_p.float()[:, None] * probs.max(dim=-1, keepdim=True).values)
        processed = torch.log_softmax(scaled.masked_fill(~keep, float("-inf")), dim=-1)
    else:
        keep = None
        processed = raw if unit else torch.log_softmax(scaled, dim=-1)
    cdf = torch.cumsum(processed.exp().double(), dim=-1)
    u = u * cdf[:, -1]
    tokens = torch.searchsorted(cdf, u[:, None], right=True).squeeze(-1).clamp(max=logits.shape[-1] - 1)
    if keep is not None:
        tokens = torch.where(keep.gather(-1, tokens[:, None]).squeeze(-1), tokens,
                             (keep * torch.arange(keep.shape[-1], device=keep.device)).argmax(dim=-1))
    return tokens, raw.gather(-1, tokens[:, None]).squeeze(-1), processed.gather(-1, tokens[:, None]).squeeze(-1)


def _greedy(logits):
    logits = logits.float()
    tokens = logits.argmax(dim=-1)
    raw = torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
    return tokens, raw, torch.zeros_like(raw)


def uniforms_ahead(seeds: list[int], offsets: list[int], count: int) -> list[list[float]]:
    """The Philox uniforms of offsets ``offsets[b] .. offsets[b] + count - 1`` of each stream, in one call
    (what ``sample`` would draw at those offsets; the engine buffers them to skip a Philox call per step)."""
    s = torch.tensor(seeds, dtype=torch.int64).repeat_interleave(count)
    o = (torch.tensor(offsets, dtype=torch.int64)[:, None] + torch.arange(count)).reshape(-1)
    return philox_uniform(s, o).view(len(seeds), count).tolist()


def sample_rows(logits: torch.Tensor, params: list, seeds: list[int], offsets: list[int],
                uniforms: list[float | None] | None = None):
    """One token per row of logits [B, V] for rows with ``SamplingParams`` ``params[b]``, RNG stream
    ``seeds[b]`` at ``offsets[b]``; ``uniforms[b]``, when given, is that stream's Philox uniform at that
    offset (from :func:`uniforms_ahead`). Returns (tokens int64 [B], raw fp32 [B], processed fp32 [B])."""
    B, V = logits.shape
    dev = logits.device
    kinds = ["greedy" if p.temperature <= 0 else
             "truncated" if (0 < p.top_k < V or p.top_p < 1.0) else "plain" for p in params]
    tokens = torch.empty(B, dtype=torch.int64, device=dev)
    raw = torch.empty(B, dtype=torch.float32, device=dev)
    proc = torch.empty(B, dtype=torch.float32, device=dev)
    for kind in ("greedy", "plain", "truncated"):
        rows = [b for b in range(B) if kinds[b] == kind]
        if not rows:
            continue
        whole = len(rows) == B
        idx = None if whole else torch.tensor(rows, device=dev)
        sub = logits if whole else logits[idx]
        ps = [params[b] for b in rows]

        def col(values, dtype):
            return torch.tensor(values, dtype=dtype, device=dev)

        if kind == "greedy":
            out = _greedy(sub)
        elif kind == "plain":
            if uniforms is not None and all(uniforms[b] is not None for b in rows):
                u = col([uniforms[b] for b in rows], torch.float64)
            else:
                u = philox_uniform(col([seeds[b] for b in rows], torch.int64),
                                   col([offsets[b] for b in rows], torch.int64))
            out = _untruncated(sub, col([p.temperature for p in ps], torch.float32),
                               col([p.min_p for p in ps], torch.float32), u)
        else:
            out = sample(sub, temperature=col([p.temperature for p in ps], torch.float32),
                         top_k=col([p.top_k for p in ps], torch.int64), top_p=col([p.top_p for p in ps], torch.float32),
                         min_p=col([p.min_p for p in ps], torch.float32),
                         seeds=col([seeds[b] for b in rows], torch.int64),
                         offsets=col([offsets[b] for b in rows], torch.int64))
        if whole:
            return out
        tokens[idx], raw[idx], proc[idx] = out
    return tokens, raw, proc


def draw(seqs: list, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One token per sample of ``seqs`` (``vt_core.generation.sequence.Sequence``) from logits [len(seqs), V]
    on the device: the fused kernel on CUDA; on CPU :func:`sample_rows`, with each plain row's Philox uniforms
    buffered ``UNIFORMS_AHEAD`` offsets at a time on its sequence. Returns (tokens int64, raw fp32, processed fp32)."""
    offsets = [s.sampled for s in seqs]
    if logits.device.type != "cpu":
        def col(values, dtype):
            return to_device(torch.tensor(values, dtype=dtype), logits.device)

        ps = [s.params for s in seqs]
        return sample_prevalidated(logits, col([p.temperature for p in ps], torch.float32),
                                   col([p.top_k for p in ps], torch.int64), col([p.top_p for p in ps], torch.float32),
                                   col([p.min_p for p in ps], torch.float32), col([s.seed for s in seqs], torch.int64),
                                   col(offsets, torch.int64))
    V = logits.shape[1]
    plain = [s.params.temperature > 0 and not 0 < s.params.top_k < V and s.params.top_p >= 1.0 for s in seqs]
    refill = [r for r, s in enumerate(seqs) if plain[r] and not 0 <= offsets[r] - s.uniforms_from < len(s.uniforms)]
    if refill:
        ahead = uniforms_ahead([seqs[r].seed for r in refill], [offsets[r] for r in refill], UNIFORMS_AHEAD)
        for r, values in zip(refill, ahead):
            seqs[r].uniforms, seqs[r].uniforms_from = values, offsets[r]
    uniforms = [s.uniforms[o - s.uniforms_from] if p else None for s, o, p in zip(seqs, offsets, plain)]
    return sample_rows(logits, [s.params for s in seqs], [s.seed for s in seqs], offsets, uniforms)
