"""Packing metadata: document lengths -> cu_seqlens, position_ids, segment ids.

Three implementations with the same results, chosen by ``VT_BACKEND`` (see ``_dispatch``):

- ``packing_metadata_torch`` (``chunked.py``): pure torch (``auto`` on CPU tensors, ``torch``).
- the C++ CPU twin in vt_core._C (``native.py``; ``VT_BACKEND=cpp`` on CPU tensors).
- the CUDA kernels in vt_core._C (``auto`` or ``cuda`` on CUDA tensors; there is no Triton kernel).

The native paths follow the pattern of every vt_core._C op: torch allocates the outputs here, the
extension gets their ``data_ptr()``s and sizes (and, on CUDA, the device and torch's current stream).

``naive.py`` holds the readable oracle, a Python loop (``packing_metadata_naive``).
"""

from __future__ import annotations

import torch

from .._dispatch import resolve_backend
from .chunked import packing_metadata_torch
from .naive import packing_metadata_naive
from .native import packing_metadata_native

AVAILABLE = ("torch", "cpp", "cuda")


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
        return packing_metadata_torch(lengths)
    return packing_metadata_native(lengths, total, backend)


# Public alias kept for users: the name vt_core.kernels.__all__ has always exported.
packing_metadata_reference = packing_metadata_torch

__all__ = ["AVAILABLE", "packing_metadata", "packing_metadata_naive", "packing_metadata_native",
           "packing_metadata_reference", "packing_metadata_torch"]
