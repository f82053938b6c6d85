"""The vt_core._C twins of ``sample``: the C++ CPU twin (``backend="cpp"``) and the CUDA kernel (``"cuda"``)."""

from __future__ import annotations

import torch

from .._dispatch import cuda_launch_args, native


def sample_native(logits, temperature, top_k, top_p, min_p, seeds, offsets, backend: str):
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
