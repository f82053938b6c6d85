"""vt_core.kernels: fused losses, packed attention and sampling on packed tokens (no padding, no [T, V] logits).

Every op dispatches on ``VT_BACKEND`` (see ``_dispatch``) and has a chunked pure-torch reference beside
its Triton/CUDA path. Installed as ``vt_core.kernels`` (never a top-level ``kernels`` import).
"""

from ._dispatch import requested_backend, resolve_backend
from .attention import (
    packed_attention,
    packed_attention_reference,
    paged_decode_attention,
    paged_decode_attention_reference,
    write_kv_cache,
    write_kv_cache_reference,
)
from .advantages import expand_to_tokens, group_advantages
from .cross_entropy import linear_cross_entropy
from .kl_distill import linear_kl_distill
from .linear_logprobs import TokenStats, linear_logprobs, linear_logprobs_reference, linear_token_stats
from .rl_loss import RLLossConfig, linear_rl_loss, rl_loss_from_logprobs
from .packing import packing_metadata, packing_metadata_reference
from .sampling import sample, sample_reference

__all__ = [
    "requested_backend",
    "resolve_backend",
    "packed_attention",
    "packed_attention_reference",
    "paged_decode_attention",
    "paged_decode_attention_reference",
    "write_kv_cache",
    "write_kv_cache_reference",
    "linear_kl_distill",
    "packing_metadata",
    "packing_metadata_reference",
    "linear_logprobs",
    "linear_logprobs_reference",
    "linear_token_stats",
    "TokenStats",
    "linear_cross_entropy",
    "RLLossConfig",
    "linear_rl_loss",
    "rl_loss_from_logprobs",
    "group_advantages",
    "expand_to_tokens",
    "sample",
    "sample_reference",
]
