"""Contiguous decode-time K/V mirror of the running batch: the engine's CPU decode attention.

The torch path of ``paged_decode_attention`` gathers every running sequence's blocks out of the paged
cache in every layer at every step, a copy of the whole live context per token. On CPU that copy is
most of a decode step. :class:`DecodeWorkspace` keeps, per layer, the running sequences' keys and values
in one contiguous ``[rows, Hkv, capacity, d]`` tensor: each step appends one position per row, and the
mirror is rebuilt (gathered from the paged cache, which stays the source of truth and keeps being
written) only when the set of running sequences changes or a row outgrows the capacity. Attention is
then the same masked SDPA the torch reference runs, over the contiguous mirror (with an additive 0 / -inf
mask, which gives the boolean mask's values and is ~15% faster on CPU).

Rows are laid out longest first when the mirror is built; every live row grows by one position per step,
so the order holds until the next rebuild. :meth:`DecodeWorkspace.plan` cuts the rows into a few
contiguous groups of similar length and each group attends only over its own longest row's positions
(one SDPA call per group instead of every row padded to the batch's longest): on a batch with lengths
spread over 16..512 that halves the attention work. Per-step index and mask tensors are built once per
step in the plan, not once per layer.

Cost: memory for a second copy of the running sequences' K/V (rows x capacity, capacity doubling), and
one gather per change of the running set instead of one per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# An extra SDPA call costs about as much as attending this many (row, position) pairs (measured on one
# CPU core: ~80 us per call, ~0.12 us per pair); a group is split off only when it saves twice that.
_CALL_COST_PAIRS = 700


@dataclass
class DecodePlan:
    """Per-step indexing of the mirror, shared by every layer (see :meth:`DecodeWorkspace.plan`)."""

    rows: torch.Tensor  # mirror row of each running sequence, int64 [B]
    flat: torch.Tensor  # row-major index of (row, kv head, position) in a layer's [R * Hkv * capacity] rows
    identity: bool  # the running sequences are exactly mirror rows 0..R-1 in order
    groups: list  # (first row, end row, positions attended, additive mask [rows, 1, 1, positions]) per SDPA call


class DecodeWorkspace:
    """Per-layer contiguous K/V of the running rows (see the module docstring)."""

    def __init__(self, cache, num_layers: int):
        self.cache = cache
        self.num_layers = num_layers
        self.rows: list = []
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.capacity = 0

    def sync(self, seqs: list, lengths: list[int]) -> list[int]:
        """Make the mirror hold every sequence of ``seqs`` with room for ``lengths[r]`` positions; returns the
        mirror row of each. Rows of sequences that left stay (masked) until they are more than a quarter of
        the mirror, so a finishing sample costs no copy; a new sequence or a longer one rebuilds."""
        where = {id(s): r for r, s in enumerate(self.rows) if s is not None}
        need = max(lengths)
        if need <= self.capacity and all(id(s) in where for s in seqs):
            if 4 * (len(self.rows) - len(seqs)) <= len(self.rows):
                live = {id(s) for s in seqs}
                self.rows = [s if s is not None and id(s) in live else None for s in self.rows]
                return [where[id(s)] for s in seqs]
            order = sorted(range(len(seqs)), key=lambda i: where[id(seqs[i])])
            keep = torch.tensor([where[id(seqs[i])] for i in order], device=self.k[0].device)
            self.k = [t.index_select(0, keep) for t in self.k]
            self.v = [t.index_select(0, keep) for t in self.v]
            self.rows = [seqs[i] for i in order]
            rows = [0] * len(seqs)
            for r, i in enumerate(order):
                rows[i] = r
            return rows
        bs, cache = self.cache.block_size, self.cache
        capacity = max(need, 2 * self.capacity if need > self.capacity else self.capacity, 64)
        capacity = -(-capacity // bs) * bs
        width = capacity // bs
        order = sorted(range(len(seqs)), key=lambda i: -lengths[i])
        table = torch.tensor([seqs[i].blocks[:width] + [0] * (width - min(len(seqs[i].blocks), width)) for i in order],
                             dtype=torch.long, device=cache.k.device)
        _, _, hkv, d = cache.k.shape[1:]
        self.k, self.v = [], []
        for i in range(self.num_layers):
            for src, dst in ((cache.k[i], self.k), (cache.v[i], self.v)):
                dst.append(src[table].reshape(len(seqs), capacity, hkv, d).transpose(1, 2).contiguous())
        self.rows, self.capacity = [seqs[i] for i in order], capacity
        rows = [0] * len(seqs)
        for r, i in enumerate(order):
            rows[i] = r
        return rows

    def plan(self, seqs: list, positions: list[int]) -> DecodePlan:
        """Sync the mirror for ``seqs`` writing at ``positions`` this step and build the step's indexing."""
        rows = self.sync(seqs, [p + 1 for p in positions])
        R, hkv, cap = len(self.rows), self.k[0].shape[1], self.capacity
        dev = self.k[0].device
        last = [0] * R
        for r, p in zip(rows, positions):
            last[r] = p
        groups, start = [], 0
        suffix = last[:]
        for r in range(R - 2, -1, -1):
            suffix[r] = max(suffix[r], suffix[r + 1])
        for r in range(1, R + 1):
            if r == R or (R - r) * (suffix[start] - suffix[r]) > 2 * _CALL_COST_PAIRS:
                n = max(last[start:r]) + 1
                ends = torch.tensor(last[start:r], device=dev)
                mask = torch.zeros(r - start, n, device=dev, dtype=self.k[0].dtype)
                mask.masked_fill_(torch.arange(n, device=dev)[None, :] > ends[:, None], float("-inf"))
                groups.append((start, r, n, mask[:, None, None, :]))
                start = r
        rows_t = torch.tensor(rows, device=dev)
        heads = torch.arange(hkv, device=dev)
        pos_t = torch.tensor(positions, device=dev)
        flat = ((rows_t[:, None] * hkv + heads[None, :]) * cap + pos_t[:, None]).reshape(-1)
        return DecodePlan(rows_t, flat, rows == list(range(R)), groups)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: DecodePlan,
               scale: float) -> torch.Tensor:
        """Write this step's k, v [B, Hkv, d] at the plan's rows and positions, then attend q [B, H, d] over
        each row's positions 0..its own. Returns o [B, H, d]."""
        B, H, d = q.shape
        kw, vw = self.k[layer], self.v[layer]
        R, hkv = kw.shape[0], kw.shape[1]
        kw.view(-1, d).index_copy_(0, plan.flat, k.reshape(-1, d).to(kw.dtype))
        vw.view(-1, d).index_copy_(0, plan.flat, v.reshape(-1, d).to(vw.dtype))
        qr = q if plan.identity else q.new_zeros(R, H, d).index_copy_(0, plan.rows, q)
        qr = qr.view(R, hkv, H // hkv, d)
        outs = [F.scaled_dot_product_attention(qr[a:b], kw[a:b, :, :n], vw[a:b, :, :n], attn_mask=mask, scale=scale)
                for a, b, n, mask in plan.groups]
        o = (outs[0] if len(outs) == 1 else torch.cat(outs)).reshape(R, H, d)
        return o if plan.identity else o[plan.rows]
