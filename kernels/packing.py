"""Packing metadata: document lengths -> cu_seqlens, position_ids, segment ids.

The torch version here is the reference; vt_core._C holds a C++ twin and a CUDA kernel.
"""

from __future__ import annotations

import torch


def packing_metadata_reference(lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """lengths [B] (ints >= 0) -> cu_seqlens int32 [B+1], position_ids int64 [T], seq_ids int32 [T]."""
    lengths = lengths.to(torch.int64)
    cu = torch.zeros(lengths.numel() + 1, dtype=torch.int64, device=lengths.device)
    torch.cumsum(lengths, 0, out=cu[1:])
    total = int(cu[-1])
    seq_ids = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths, output_size=total)
    position_ids = torch.arange(total, device=lengths.device) - cu[seq_ids]
    return cu.to(torch.int32), position_ids, seq_ids.to(torch.int32)


def packing_metadata(lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Metadata of documents packed back to back without padding.

    lengths: [B] integer tensor of document lengths (>= 0).
    Returns (cu_seqlens int32 [B+1], position_ids int64 [T], seq_ids int32 [T]) with T = lengths.sum();
    position ids restart at 0 in every document.
    """
    if lengths.dim() != 1:
        raise ValueError(f"packing_metadata: lengths must be 1-D [B], got shape {tuple(lengths.shape)}")
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"packing_metadata: lengths must be an integer tensor, got {lengths.dtype}")
    if lengths.numel() and int(lengths.min()) < 0:
        raise ValueError(f"packing_metadata: lengths must be >= 0, got min {int(lengths.min())}")
    return packing_metadata_reference(lengths)
