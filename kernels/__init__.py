"""vt_core.kernels: fused losses, packed attention and sampling on packed tokens (no padding, no [T, V] logits).

Every op dispatches on ``VT_BACKEND`` (see ``_dispatch``) and has a chunked pure-torch reference beside
its Triton/CUDA path. Installed as ``vt_core.kernels`` (never a top-level ``kernels`` import).
"""

from ._dispatch import requested_backend, resolve_backend
from .attention import packed_attention, packed_attention_reference
from .packing import packing_metadata, packing_metadata_reference

__all__ = [
    "requested_backend",
    "resolve_backend",
    "packed_attention",
    "packed_attention_reference",
    "packing_metadata",
    "packing_metadata_reference",
]
