"""Packing metadata: document lengths -> cu_seqlens, position_ids, segment ids.

Three implementations with the same results, chosen by ``VT_BACKEND`` (see ``_dispatch``):

- ``packing_metadata_reference``: pure torch, the oracle (``auto`` on CPU tensors, ``torch``).
- the C++ CPU twin in vt_core._C (``VT_BACKEND=cuda`` on CPU tensors).
- the CUDA kernels in vt_core._C (``auto`` or ``cuda`` on CUDA tensors; there is no Triton kernel).

The native paths follow the pattern of every vt_core._C op: torch allocates the outputs here, the
extension gets their ``data_ptr()``s and sizes (and, on CUDA, the device and torch's current stream).
"""

from __future__ import annotations

import torch

from ._dispatch import cuda_launch_args, native, resolve_backend

AVAILABLE = ("torch", "cpp", "cuda")


def packing_metadata_reference(lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """lengths [B] (ints >= 0) -> cu_seqlens int32 [B+1], position_ids int64 [T], seq_ids int32 [T]."""
    lengths = lengths.to(torch.int64)
    cu = torch.zeros(lengths.numel() + 1, dtype=torch.int64, device=lengths.device)
    torch.cumsum(lengths, 0, out=cu[1:])
    total = int(cu[-1])
    seq_ids = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths, output_size=total)
    position_ids = torch.arange(total, device=lengths.device) - cu[seq_ids]
    return cu.to(torch.int32), position_ids, seq_ids.to(torch.int32)


def _packing_metadata_native(
    lengths: torch.Tensor, total: int, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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


def packing_metadata(lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Metadata of documents packed back to back without padding.

    lengths: [B] integer tensor of document lengths (>= 0), on CPU or CUDA.
    Returns (cu_seqlens int32 [B+1], position_ids int64 [T], seq_ids int32 [T]) on the same device, with
    T = lengths.sum() <= 2^31 - 1; position ids restart at 0 in every document, seq_ids[t] is the index
    of the document holding token t (empty documents hold none).
    """
    if lengths.dim() != 1:
        raise ValueError(f"packing_metadata: lengths must be 1-D [B], got shape {tuple(lengths.shape)}")
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise ValueError(f"packing_metadata: lengths must be an integer tensor, got {lengths.dtype}")
    if lengths.numel() and int(lengths.min()) < 0:
        raise ValueError(f"packing_metadata: lengths must be >= 0, got min {int(lengths.min())}")
    total = int(lengths.sum(dtype=torch.int64))
    if total > torch.iinfo(torch.int32).max:
        raise ValueError(f"packing_metadata: lengths sum to {total} > 2^31 - 1, which int32 cu_seqlens cannot hold")
    backend = resolve_backend("packing_metadata", lengths, AVAILABLE)
    if backend == "torch":
        return packing_metadata_reference(lengths)
    return _packing_metadata_native(lengths, total, backend)
