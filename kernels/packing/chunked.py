"""The pure-torch path of ``packing_metadata`` (cumsum and repeat_interleave; the CPU path)."""

from __future__ import annotations

import torch


def packing_metadata_torch(lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """lengths [B] (ints >= 0) -> cu_seqlens int32 [B+1], position_ids int64 [T], seq_ids int32 [T]."""
    lengths = lengths.to(torch.int64)
    cu = torch.zeros(lengths.numel() + 1, dtype=torch.int64, device=lengths.device)
    torch.cumsum(lengths, 0, out=cu[1:])
    total = int(cu[-1])
    seq_ids = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths, output_size=total)
    position_ids = torch.arange(total, device=lengths.device) - cu[seq_ids]
    return cu.to(torch.int32), position_ids, seq_ids.to(torch.int32)
