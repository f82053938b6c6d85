"""Backend dispatch for vt_core.kernels.

``VT_BACKEND=auto|torch|triton|cuda`` (read on every call, so tests and callers can switch it):

- ``auto`` (default): Triton on CUDA tensors, the pure-torch reference otherwise.
- ``torch``: always the chunked pure-torch reference.
- ``triton``: always Triton. On CPU tensors this needs ``TRITON_INTERPRET=1`` (set before triton is
  imported), which is how CI runs every Triton kernel.
- ``cuda``: the hand-written CUDA kernel where an op has one (sampling); ops without one use the
  ``auto`` choice and say so once in the log.
"""

from __future__ import annotations

import logging
import os

import torch

BACKENDS = ("auto", "torch", "triton", "cuda")
_log = logging.getLogger("vt_core.kernels")
_warned: set[tuple[str, str]] = set()


def requested_backend() -> str:
    """The backend named by ``VT_BACKEND`` (``auto`` when unset)."""
    name = os.environ.get("VT_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"VT_BACKEND={name!r} is not one of {', '.join(BACKENDS)}")
    return name


def triton_interpret() -> bool:
    """True when Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def log_once(op: str, message: str) -> None:
    """Log a fallback or backend note once per (op, message)."""
    if (op, message) not in _warned:
        _warned.add((op, message))
        _log.warning("%s: %s", op, message)


def resolve_backend(op: str, tensor: torch.Tensor, available: tuple[str, ...] = ("torch", "triton")) -> str:
    """Pick the backend that runs ``op`` on ``tensor``; ``available`` lists the ones ``op`` implements."""
    name = requested_backend()
    if name == "cuda" and "cuda" not in available:
        log_once(op, "VT_BACKEND=cuda but this op has no CUDA kernel; using the auto choice")
        name = "auto"
    if name == "auto":
        return "triton" if tensor.is_cuda and "triton" in available else "torch"
    if name == "triton":
        if "triton" not in available:
            log_once(op, "VT_BACKEND=triton but this op has no Triton kernel; using the torch reference")
            return "torch"
        if not tensor.is_cuda and not triton_interpret():
            raise RuntimeError(
                f"{op}: VT_BACKEND=triton with CPU tensors needs TRITON_INTERPRET=1 set before triton is imported"
            )
    if name == "cuda" and not tensor.is_cuda:
        raise RuntimeError(f"{op}: VT_BACKEND=cuda needs CUDA tensors, got a tensor on {tensor.device}")
    return name
