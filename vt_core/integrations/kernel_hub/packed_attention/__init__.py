"""A local repository of the `kernels` distribution (metadata.json beside this file): vt_core's packed attention
under flash-attn's function names, which transformers calls for ``attn_implementation="vt-core/packed-attention"``
once ``vt_core.integrations.hub.use_local_kernels()`` has mapped that repo id here (no network)."""

from vt_core.integrations.hub import flash_attn_func, flash_attn_varlen_func

__all__ = ["flash_attn_func", "flash_attn_varlen_func"]
