"""Backend dispatch for vt_core.kernels.

An op lists the implementations it has in ``available``, a subset of:
``"torch"`` (the pure-torch reference, always there), ``"triton"`` (Triton kernels), ``"cuda"`` (a
hand-written CUDA kernel in vt_core._C) and ``"cpp"`` (that CUDA kernel's C++ CPU twin in vt_core._C).
``resolve_backend(op, tensor, available)`` picks one from ``VT_BACKEND=auto|torch|triton|cuda|cpp``
(read on every call, so tests and callers can switch it):

- ``auto`` (default): on CUDA tensors Triton, else the CUDA kernel, else torch; on CPU tensors torch.
- ``torch``: always the chunked pure-torch reference.
- ``triton``: always Triton. On CPU tensors this needs ``TRITON_INTERPRET=1`` (set before triton is
  imported), which is how CI runs every Triton kernel. Ops without Triton use torch (logged once).
- ``cuda``: the native path. CUDA tensors get the CUDA kernel. An op with a CUDA kernel but no twin raises
  on CPU tensors; an op with neither uses the ``auto`` choice (logged once). On CPU tensors of an op with a
  C++ twin it still selects the twin, with a one-time deprecation note: that is ``cpp``'s job now.
- ``cpp``: the C++ CPU twins in vt_core._C on CPU tensors, which is how CI runs the native code. Ops without
  a twin, and CUDA tensors, use the ``auto`` choice (logged once).

Native ops pass raw pointers to vt_core._C: :func:`native` returns the module, :func:`cuda_launch_args`
the (device index, stream handle) pair that every CUDA entry takes after its pointers and sizes.
"""

from __future__ import annotations

import logging
import os

import torch

BACKENDS = ("auto", "torch", "triton", "cuda", "cpp")
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


def native():
    """The compiled extension vt_core._C (C++ CPU twins and, where built, CUDA kernels)."""
    import vt_core._C

    return vt_core._C


def cuda_launch_args(tensor: torch.Tensor) -> tuple[int, int]:
    """(device index, stream handle) for a CUDA entry of vt_core._C working on ``tensor``'s device.

    The stream is torch's current stream on that device, so native kernels order with torch's work.
    """
    if not tensor.is_cuda:
        raise ValueError(f"cuda_launch_args: expected a CUDA tensor, got one on {tensor.device}")
    return tensor.device.index, torch.cuda.current_stream(tensor.device).cuda_stream


def resolve_backend(op: str, tensor: torch.Tensor, available: tuple[str, ...] = ("torch", "triton")) -> str:
    """Pick the backend that runs ``op`` on ``tensor``; ``available`` lists the ones ``op`` implements.

    Returns one of ``"torch"``, ``"triton"``, ``"cuda"``, ``"cpp"`` (see the module docstring).
    """
    name = requested_backend()
    if name == "cpp":
        if not tensor.is_cuda and "cpp" in available:
            return "cpp"
        log_once(op, f"VT_BACKEND=cpp but this op has no C++ twin for tensors on {tensor.device}; "
                 "using the auto choice")
        name = "auto"
    if name == "cuda":
        if tensor.is_cuda and "cuda" in available:
            return "cuda"
        if not tensor.is_cuda and "cpp" in available:
            log_once("VT_BACKEND", "cuda on CPU tensors selecting the C++ twins is deprecated; use VT_BACKEND=cpp")
            return "cpp"
        if "cuda" in available:
            raise RuntimeError(
                f"{op}: VT_BACKEND=cuda needs CUDA tensors (this op has no C++ CPU twin), "
                f"got a tensor on {tensor.device}"
            )
        log_once(op, "VT_BACKEND=cuda but this op has no CUDA kernel; using the auto choice")
        name = "auto"
    if name == "auto":
        if tensor.is_cuda:
            return "triton" if "triton" in available else "cuda" if "cuda" in available else "torch"
        return "torch"
    if name == "triton":
        if "triton" not in available:
            log_once(op, "VT_BACKEND=triton but this op has no Triton kernel; using the torch reference")
            return "torch"
        if not tensor.is_cuda and not triton_interpret():
            raise RuntimeError(
                f"{op}: VT_BACKEND=triton with CPU tensors needs TRITON_INTERPRET=1 set before triton is imported"
            )
    return name
