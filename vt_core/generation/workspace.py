"""Contiguous decode-time K/V mirror of the running batch: the engine's CPU decode attention.

The torch path of ``paged_decode_attention`` gathers every running sequence's blocks out of the paged
cache in every layer at every step, a copy of the whole live context per token. On CPU that copy is
most of a decode step. :class:`DecodeWorkspace` keeps, per layer, the running sequences' keys and values
in one contiguous ``[rows, Hkv, capacity, d]`` tensor: each step appends one position per row, and the
mirror is rebuilt (gathered from the paged cache, which stays the source of truth and keeps being
written) only when the set of running sequences changes or a row outgrows the capacity. Attention is
then the same masked SDPA the torch reference runs, over the contiguous mirror.

Cost: memory for a second copy of the running sequences' K/V (rows x capacity, capacity doubling), and
one gather per change of the running set instead of one per step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class DecodeWorkspace:
    """Per-layer contiguous K/V of the running rows (see the module docstring)."""

    def __init__(self, cache, num_layers: int):
        self.cache = cache
        self.num_layers = num_layers
        self.rows: list = []
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.capacity = 0

    def sync(self, seqs: list, lengths: list[int]) -> torch.Tensor:
        """Make the mirror hold every sequence of ``seqs`` with room for ``lengths[r]`` positions; returns the
        mirror row of each (int64 [B]). Rows of sequences that left stay (masked) until they are more than a
        quarter of the mirror, so a finishing sample costs no copy; a new sequence or a longer one rebuilds."""
        where = {id(s): r for r, s in enumerate(self.rows) if s is not None}
        need = max(lengths)
        if need <= self.capacity and all(id(s) in where for s in seqs):
            if 4 * (len(self.rows) - len(seqs)) <= len(self.rows):
                live = {id(s) for s in seqs}
                self.rows = [s if s is not None and id(s) in live else None for s in self.rows]
                return torch.tensor([where[id(s)] for s in seqs], device=self.k[0].device)
            keep = torch.tensor([where[id(s)] for s in seqs], device=self.k[0].device)
            self.k = [t.index_select(0, keep) for t in self.k]
            self.v = [t.index_select(0, keep) for t in self.v]
            self.rows = list(seqs)
            return torch.arange(len(seqs), device=keep.device)
        bs, cache = self.cache.block_size, self.cache
        capacity = max(need, 2 * self.capacity if need > self.capacity else self.capacity, 64)
        capacity = -(-capacity // bs) * bs
        width = capacity // bs
        table = torch.tensor([s.blocks[:width] + [0] * (width - min(len(s.blocks), width)) for s in seqs],
                             dtype=torch.long, device=cache.k.device)
        _, _, hkv, d = cache.k.shape[1:]
        self.k, self.v = [], []
        for i in range(self.num_layers):
            for src, dst in ((cache.k[i], self.k), (cache.v[i], self.v)):
                dst.append(src[table].reshape(len(seqs), capacity, hkv, d).transpose(1, 2).contiguous())
        self.rows, self.capacity = list(seqs), capacity
        return torch.arange(len(seqs), device=table.device)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor,
               positions: torch.Tensor, scale: float) -> torch.Tensor:
        """Write this step's k, v [B, Hkv, d] at mirror ``rows`` [B] and ``positions`` [B], then attend
        q [B, H, d] over each row's positions 0..positions[b]. Returns o [B, H, d]."""
        B, H, d = q.shape
        kw, vw = self.k[layer], self.v[layer]
        kw[rows, :, positions] = k.to(kw.dtype)
        vw[rows, :, positions] = v.to(vw.dtype)
        R, hkv = kw.shape[0], kw.shape[1]
        last = torch.zeros(R, dtype=torch.long, device=q.device).index_copy_(0, rows, positions)
        n = int(positions.max()) + 1
        valid = torch.arange(n, device=q.device)[None, :] <= last[:, None]
        qr = q.new_zeros(R, H, d).index_copy_(0, rows, q)
        o = F.scaled_dot_product_attention(qr.view(R, hkv, H // hkv, d), kw[:, :, :n], vw[:, :, :n],
                                           attn_mask=valid[:, None, None, :], scale=scale)
        return o.reshape(R, H, d)[rows]
