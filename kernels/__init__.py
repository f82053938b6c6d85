"""vt_core.kernels: fused losses, packed attention and sampling on packed tokens (no padding, no [T, V] logits).

One folder per op with fixed file roles: ``__init__.py`` (public functions: checks, docstring, dispatch),
``fused.py`` (Triton kernels, launchers, CUDA launch tables), ``function.py`` (autograd Functions), ``chunked.py``
(the pure-torch path: the CPU path and the bench baseline), ``naive.py`` (the readable oracle the tests and benches
share), ``native.py`` (vt_core._C wrappers). Every op dispatches on ``VT_BACKEND`` (see ``_dispatch``); the
linear-head ops share ``_linear``. Installed as ``vt_core.kernels`` (never a top-level ``kernels`` import).
"""

if __name__ == "kernels":
    # This folder was imported as a top-level package because the repository root is on sys.path
    # (`python -m pytest`, `python -c`, a REPL or notebook started there). It is vt_core.kernels and nothing
    # else: the name `kernels` belongs to Hugging Face's kernel hub distribution, which transformers >= 5.25
    # imports. Hand the import to the first `kernels` found on sys.path without the repository root; where
    # none is installed, stay an empty module without __file__, which is what Python makes of a folder
    # without __init__.py (a PEP 420 portion) and what transformers' availability probe reads as absent.
    import importlib.machinery as _machinery
    import importlib.util as _util
    import os as _os
    import sys as _sys

    _root = _os.path.dirname(_os.path.dirname(_os.path.realpath(__file__)))
    _elsewhere = [p for p in _sys.path if _os.path.realpath(p or _os.curdir) != _root]
    _spec = _machinery.PathFinder.find_spec("kernels", _elsewhere)
    if _spec is not None and _spec.loader is not None:
        _real = _util.module_from_spec(_spec)
        _sys.modules["kernels"] = _real  # `import kernels` returns what sys.modules holds after this file ran
        _spec.loader.exec_module(_real)
    else:
        __file__ = None
        __path__ = []
        __spec__.submodule_search_locations = []
else:
    from ._dispatch import requested_backend, resolve_backend
    from .attention import (
        packed_attention,
        packed_attention_reference,
        packed_attention_torch,
        paged_decode_attention,
        paged_decode_attention_reference,
        paged_decode_attention_torch,
        write_kv_cache,
        write_kv_cache_reference,
        write_kv_cache_torch,
    )
    from .advantages import expand_to_tokens, group_advantages
    from .cross_entropy import linear_cross_entropy
    from .kl_distill import linear_kl_distill
    from .linear_logprobs import (
        TokenStats,
        linear_logprobs,
        linear_logprobs_reference,
        linear_logprobs_torch,
        linear_token_stats,
    )
    from .rl_loss import RLLossConfig, linear_rl_loss, rl_loss_from_logprobs
    from .packing import packing_metadata, packing_metadata_reference, packing_metadata_torch
    from .sampling import sample, sample_reference, sample_torch

    __all__ = [
        "requested_backend",
        "resolve_backend",
        "packed_attention",
        "packed_attention_reference",
        "packed_attention_torch",
        "paged_decode_attention",
        "paged_decode_attention_reference",
        "paged_decode_attention_torch",
        "write_kv_cache",
        "write_kv_cache_reference",
        "write_kv_cache_torch",
        "linear_kl_distill",
        "packing_metadata",
        "packing_metadata_reference",
        "packing_metadata_torch",
        "linear_logprobs",
        "linear_logprobs_reference",
        "linear_logprobs_torch",
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
        "sample_torch",
    ]
