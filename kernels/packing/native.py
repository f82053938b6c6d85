"""The vt_core._C twins of ``packing_metadata``: the C++ CPU twin and the CUDA kernels."""

from __future__ import annotations

import torch

from .._dispatch import cuda_launch_args, native


def packing_metadata_native(
    lengths: torch.Tensor, total: int, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The C++ twin (``backend="cpp"``) or the CUDA kernels (``"cuda"``): torch allocates, _C fills."""
    lengths = lengths.to(torch.int64).contiguous()
    batch = lengths.numel()
    cu_seqlens = torch.empty(batch + 1, dtype=torch.int32, device=lengths.device)
    position_ids = torch.empty(total, dtype=torch.int64, device=lengths.device)
    seq_ids = torch.empty(total, dtype=torch.int32, device=lengths.device)
    pointers = (lengths.data_ptr(), batch, total, cu_seqlens.data_ptr(), position_ids.data_ptr(), seq_ids.data_ptr())
    if backend == "cuda":
        native().packing_metadata_cuda(*pointers, *cuda_launch_args(lengths))
    else:
        native().packing_metadata_cpu(*pointers)
    return cu_seqlens, position_ids, seq_ids
