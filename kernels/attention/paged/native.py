"""Paged decode attention, native: ``paged_decode_native``, the C++ CPU kernel of csrc/decode_attention.cpp.

One name for one kernel: the Python function ``paged_decode_native``, the custom op
``vt_core::paged_decode_native`` (the same function registered with torch, which is how a ``torch.compile``d
decode step calls it as one opaque node), ``VT_BACKEND=cpp`` on CPU tensors in ``paged_decode_attention``, and
the generation engine's ``decode_attention="native"``. The compiled entry is ``vt_core._C.paged_decode_attention_cpu``:
fp32, one sequence per work item reading its blocks in place (AVX2 where the CPU has it), no gather, padding or
mask.
"""

from __future__ import annotations

import torch

from ..._dispatch import native


def paged_decode_native(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                        context_lens: torch.Tensor, softmax_scale: float, threads: int | None = None,
                        k_new: torch.Tensor | None = None, v_new: torch.Tensor | None = None) -> torch.Tensor:
    """Decode attention of q [B, H, d] over the paged caches [num_blocks, block_size, Hkv, d] -> o [B, H, d].

    fp32 CPU tensors, contiguous caches; shapes are not checked here (``paged_decode_attention`` and the engine
    validate once), block indices and context lengths are (ValueError). With ``k_new`` / ``v_new`` [B, Hkv, d]
    the last position of each sequence (``context_lens[b] - 1``) is read from them rather than from the cache,
    which the caller writes after: attention is then a pure function of its inputs. ``threads`` defaults to
    ``torch.get_num_threads()``.
    """
    B, H, D = q.shape
    q = q.contiguous()
    block_table = block_table if block_table.dtype == torch.int32 else block_table.to(torch.int32)
    context_lens = context_lens if context_lens.dtype == torch.int32 else context_lens.to(torch.int32)
    block_table, context_lens = block_table.contiguous(), context_lens.contiguous()
    if k_new is not None:
        k_new, v_new = k_new.contiguous(), v_new.contiguous()
    o = torch.empty_like(q)
    native().paged_decode_attention_cpu(
        q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), 0 if k_new is None else k_new.data_ptr(),
        0 if v_new is None else v_new.data_ptr(), block_table.data_ptr(), context_lens.data_ptr(), o.data_ptr(), B, H,
        k_cache.shape[2], D, k_cache.shape[0], k_cache.shape[1], block_table.shape[1], softmax_scale,
        torch.get_num_threads() if threads is None else threads)
    return o


_op = torch.library.custom_op("vt_core::paged_decode_native", mutates_args=())(paged_decode_native)


@_op.register_fake
def _(q, k_cache, v_cache, block_table, context_lens, softmax_scale, threads=None, k_new=None, v_new=None):
    return torch.empty_like(q)
