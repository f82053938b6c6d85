"""Packed attention as a transformers attention implementation.

    from vt_core.integrations.transformers import register_packed_attention
    register_packed_attention()                       # registers "vt_packed"
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="vt_packed")

Every attention layer then runs ``vt_core.kernels.packed_attention``. Documents are found, in this order:

1. ``cu_seq_lens_q`` / ``max_length_q`` passed as keyword arguments to the model's forward (no host sync);
2. a 2-D padding ``attention_mask`` [B, S] (left or right padding): the valid tokens are packed;
3. position_ids-based packing: batch size 1 and position ids restarting at 0 for each document
   (what transformers' ``DataCollatorWithFlattening`` produces);
4. otherwise each batch row is one document.

This is a training / scoring path: queries and keys must cover the same tokens, so it does not run decode
steps against a KV cache (generate with ``use_cache=False`` or another implementation). Dropout and
attention logit soft-capping are not supported and raise.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

from vt_core.kernels import packed_attention

ATTN_IMPLEMENTATION = "vt_packed"


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Document boundaries of one packed row: a document starts at token 0 and wherever the position is 0.

    position_ids [T] or [1, T] -> (cu_seqlens int32 [B+1], max_seqlen).
    """
    pos = position_ids.reshape(-1)
    starts = pos == 0
    starts[0] = True
    idx = starts.nonzero().reshape(-1)
    cu = torch.cat([idx, torch.tensor([pos.numel()], device=pos.device)]).to(torch.int32)
    return cu, int(cu.diff().max())


def packed_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: query [B, H, S, d], key/value [B, Hkv, S, d] -> ([B, S, H, d], None)."""
    if dropout and dropout > 0.0:
        raise ValueError(f"{ATTN_IMPLEMENTATION}: attention dropout {dropout} is not supported")
    if softcap is not None:
        raise ValueError(f"{ATTN_IMPLEMENTATION}: attention logit soft-capping is not supported")
    if kwargs.get("s_aux") is not None:
        raise ValueError(f"{ATTN_IMPLEMENTATION}: attention sinks (s_aux) are not supported")
    B, H, S, d = query.shape
    if key.shape[2] != S:
        raise ValueError(
            f"{ATTN_IMPLEMENTATION}: query covers {S} tokens but key {key.shape[2]} (a KV cache); this implementation "
            "is for training and scoring: run with use_cache=False or use another attention for generation"
        )
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    q, k, v = (x.transpose(1, 2) for x in (query, key, value))
    call = dict(causal=causal, softmax_scale=scaling, window=sliding_window)

    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None:
        max_len = kwargs.get("max_length_q")
        max_len = int(max_len) if max_len is not None else int(cu.diff().max())
        o = packed_attention(q.reshape(B * S, H, d), k.reshape(B * S, -1, d), v.reshape(B * S, -1, d),
                             cu.to(torch.int32), max_len, **call)
        return o.reshape(B, S, H, d), None

    if attention_mask is not None:
        if attention_mask.dim() != 2:
            raise ValueError(f"{ATTN_IMPLEMENTATION}: expected a 2-D padding mask [B, S], "
                             f"got {tuple(attention_mask.shape)}")
        keep = attention_mask.reshape(-1).bool()
        idx = keep.nonzero().reshape(-1)
        lens = attention_mask.bool().sum(1)
        cu = torch.cat([lens.new_zeros(1), lens.cumsum(0)]).to(torch.int32)
        o = packed_attention(q.reshape(B * S, H, d)[idx], k.reshape(B * S, -1, d)[idx], v.reshape(B * S, -1, d)[idx],
                             cu, int(lens.max()), **call)
        out = o.new_zeros(B * S, H, d).index_copy(0, idx, o)
        return out.reshape(B, S, H, d), None

    position_ids = kwargs.get("position_ids")
    if B == 1 and position_ids is not None:
        cu, max_len = cu_seqlens_from_position_ids(position_ids)
    else:
        cu = torch.arange(B + 1, device=query.device, dtype=torch.int32) * S
        max_len = S
    o = packed_attention(q.reshape(B * S, H, d), k.reshape(B * S, -1, d), v.reshape(B * S, -1, d), cu, max_len, **call)
    return o.reshape(B, S, H, d), None


def register_packed_attention(name: str = ATTN_IMPLEMENTATION) -> str:
    """Register the packed attention (and its padding-mask builder) with transformers under ``name``."""
    AttentionInterface.register(name, packed_attention_forward)
    AttentionMaskInterface.register(name, flash_attention_mask)
    return name


__all__ = ["ATTN_IMPLEMENTATION", "cu_seqlens_from_position_ids", "packed_attention_forward",
           "register_packed_attention"]
