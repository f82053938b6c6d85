"""Attention ops: packed (varlen) attention and paged decode attention, one folder per op.

``packed/``: ``packed_attention`` (training and prefill over documents packed without padding).
``paged/``: ``paged_decode_attention`` and ``write_kv_cache`` (generation on a paged KV cache), and
``paged_decode_native``, the C++ CPU decode kernel (``VT_BACKEND=cpp``, custom op ``vt_core::paged_decode_native``).
Each folder has the same roles: ``__init__.py`` (public functions: checks, docstring, dispatch), ``fused.py``
(Triton kernels and launchers), ``chunked.py`` (the pure-torch path), ``naive.py`` (the readable oracle), and
``function.py`` (autograd) or ``native.py`` (vt_core._C wrappers) where the op has one.
"""

from __future__ import annotations

from .packed import (
    packed_attention,
    packed_attention_torch,
    packed_attention_naive,
    packed_attention_reference,
)
from .paged import (
    paged_decode_attention,
    paged_decode_attention_torch,
    paged_decode_attention_naive,
    paged_decode_attention_reference,
    paged_decode_native,
    write_kv_cache,
    write_kv_cache_torch,
    write_kv_cache_reference,
)

__all__ = [
    "packed_attention",
    "packed_attention_torch",
    "packed_attention_naive",
    "packed_attention_reference",
    "paged_decode_attention",
    "paged_decode_attention_torch",
    "paged_decode_attention_naive",
    "paged_decode_attention_reference",
    "paged_decode_native",
    "write_kv_cache",
    "write_kv_cache_torch",
    "write_kv_cache_reference",
]
