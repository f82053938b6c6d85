"""vt_core's packed attention through transformers' kernel hub, from a local repository (no network).

    from vt_core.integrations.hub import use_local_kernels
    attn = use_local_kernels()                        # "vt-core/packed-attention"
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn)

transformers loads a hub attention kernel for ``attn_implementation="org/repo"`` with ``kernels.get_kernel`` and
calls the kernel's flash-attn functions (``flash_attn_varlen_func``, ``flash_attn_func``) from its own flash
attention wrapper, which handles padding masks (unpad / pad), position_ids packing and explicit
``cu_seq_lens_q``. The `kernels` distribution resolves a repo id from a local folder before the Hub when the
``LOCAL_KERNELS`` environment variable maps it (``repo_id=path``, ``:``-separated). This module provides such
a folder, ``kernel_hub/packed_attention`` (a ``metadata.json`` and an ``__init__.py`` exporting the two functions
below, written on :func:`vt_core.kernels.packed_attention`; the folder is the build variant itself, so the
``backend`` it declares is not matched against the machine: the op dispatches on the tensors' device), and
:func:`use_local_kernels` adds the mapping.

``use_kernels=True`` / ``kernelize`` are another route of the same distribution: they replace the forward of
layers transformers marks with ``use_kernel_forward_from_hub`` (for Qwen2: ``RMSNorm``, ``rotary_pos_emb``)
with a layer class from a (local) layer repository. vt_core has no kernel of that shape (its kernels are the
fused losses on hidden states, packed attention and sampling), and attention is not such a layer: it is chosen
by ``attn_implementation``. So vt_core's layers reach transformers as (1) ``attn_implementation="vt_packed"``
(``vt_core.integrations.transformers``, the AttentionInterface registration) or (2) this hub kernel; kernelize
has nothing of vt_core's to pick up until vt_core has a layer kernel (e.g. a fused RMSNorm).

Limits, as with ``vt_packed``: training and scoring only (queries and keys cover the same tokens: no decode
against a KV cache), no attention dropout, no logit soft-capping.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from vt_core.kernels import packed_attention

REPO_ID = "vt-core/packed-attention"
REPO_PATH = Path(__file__).resolve().parent / "kernel_hub" / "packed_attention"


def _window(window_size, causal: bool) -> int | None:
    """flash-attn's inclusive (left, right) window -> packed_attention's ``window`` (keys within w tokens)."""
    left, right = (-1, -1) if window_size is None else (int(window_size[0]), int(window_size[1]))
    if left < 0:
        return None
    if not causal and right != left:
        raise ValueError(f"{REPO_ID}: a non-causal window must be symmetric, got window_size={tuple(window_size)}")
    return left + 1


def _check(dropout_p: float, softcap) -> None:
    if dropout_p and dropout_p > 0.0:
        raise ValueError(f"{REPO_ID}: attention dropout {dropout_p} is not supported")
    if softcap:
        raise ValueError(f"{REPO_ID}: attention logit soft-capping is not supported")


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0):
    """flash-attn's varlen API on packed tokens: q [T, H, d], k / v [T, Hkv, d], cu_seqlens int [B+1] -> [T, H, d].
    Queries and keys must be the same tokens (cu_seqlens_q equal to cu_seqlens_k)."""
    _check(dropout_p, softcap)
    if k.shape[0] != q.shape[0] or (cu_seqlens_k is not cu_seqlens_q and not torch.equal(cu_seqlens_q, cu_seqlens_k)):
        raise ValueError(f"{REPO_ID}: queries and keys cover different tokens (a KV cache); this kernel is for "
                         "training and scoring: run with use_cache=False or use another attention for generation")
    return packed_attention(q, k, v, cu_seqlens_q.to(torch.int32), max_seqlen_q, causal=causal,
                            softmax_scale=softmax_scale, window=_window(window_size, causal))


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0):
    """flash-attn's batched API: q [B, S, H, d], k / v [B, S, Hkv, d], every row one sequence -> [B, S, H, d]."""
    _check(dropout_p, softcap)
    B, S, H, d = q.shape
    if k.shape[1] != S:
        raise ValueError(f"{REPO_ID}: queries cover {S} tokens but keys {k.shape[1]} (a KV cache); this kernel is "
                         "for training and scoring: run with use_cache=False or use another attention for generation")
    cu = torch.arange(B + 1, device=q.device, dtype=torch.int32) * S
    o = packed_attention(q.reshape(B * S, H, d), k.reshape(B * S, -1, d), v.reshape(B * S, -1, d), cu, S,
                         causal=causal, softmax_scale=softmax_scale, window=_window(window_size, causal))
    return o.reshape(B, S, H, d)


def use_local_kernels() -> str:
    """Map :data:`REPO_ID` to the local repository in ``LOCAL_KERNELS`` (other entries kept) and return the
    ``attn_implementation`` that loads it: ``from_pretrained(path, attn_implementation=use_local_kernels())``."""
    entries = [e for e in os.environ.get("LOCAL_KERNELS", "").split(":") if e and not e.startswith(REPO_ID + "=")]
    os.environ["LOCAL_KERNELS"] = ":".join(entries + [f"{REPO_ID}={REPO_PATH}"])
    return REPO_ID


__all__ = ["REPO_ID", "REPO_PATH", "flash_attn_func", "flash_attn_varlen_func", "use_local_kernels"]
