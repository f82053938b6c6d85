"""The engine's configuration: one dataclass, every field documented; ``Engine(model, **fields)`` takes the same."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DecodeAttention = Literal["auto", "paged", "native", "contiguous"]
DECODE_ATTENTION: tuple[str, ...] = ("auto", "paged", "native", "contiguous")


@dataclass
class EngineConfig:
    """How an :class:`vt_core.generation.Engine` sizes its cache, batches and decodes."""

    max_tokens_in_cache: int | None = None
    """KV cache size in tokens (give this or ``kv_budget_bytes``; default 65,536 tokens)."""
    kv_budget_bytes: int | None = None
    """KV cache size in bytes of K and V over every layer (instead of ``max_tokens_in_cache``)."""
    block_size: int | None = None
    """Tokens per cache block. None: 64 with the native CPU decode attention (its reads stream faster over
    longer contiguous runs), else 16 (fine-grained sharing of prompt blocks between samples)."""
    max_prefill_tokens: int = 8192
    """Token budget of one prefill batch (a longer prompt still gets a batch of its own)."""
    max_batch_size: int = 256
    """Most samples decoding at once."""
    eos_token_id: int | list[int] | None = None
    """Stop ids; None: the tokenizer's ``eos_token_id``, else the model config's. ``[]``: no stop id."""
    exact_logprobs: bool = False
    """After generating, re-score every sample with the trainer's packed forward and ``linear_logprobs``
    (``vt_core.generation.exact``) so that ``Completion.logprobs`` equals what the trainer recomputes bitwise
    (fp32, CPU); the decode path's values move to ``Completion.sampler_logprobs``."""
    score_tokens: int = 16384
    """Token budget of one re-scoring batch (``exact_logprobs``)."""
    decode_attention: DecodeAttention = "auto"
    """Decode attention, one runner each (``vt_core.generation.runners``):
    ``"paged"``: ``paged_decode_attention`` on the block tables (the GPU path; Triton on CUDA);
    ``"native"``: ``paged_decode_native``, the C++ CPU kernel straight on the block tables, prefill included
    (fp32 CPU models; ``vt_core.generation.cpu_decode``);
    ``"contiguous"``: a contiguous mirror of the running batch's K/V (``vt_core.generation.workspace``; CPU models
    in other dtypes, where it runs ~1.7x the paged torch path's tokens/s);
    ``"auto"``: native for fp32 CPU models, contiguous for other CPU dtypes, paged on GPU."""
    readback_lag: int | None = None
    """Launches a drawn token may stay on the device before the host reads it (None: 1 on CUDA, 0 on CPU).
    With 1 the host queues step t+1 before it waits for step t's tokens, so the device never idles on a
    per-token sync; a sample that stops on a token is found one step late (its extra token is dropped).
    Tokens, finish reasons and callbacks do not depend on it."""
    cuda_graphs: bool | None = None
    """Replay decode steps as CUDA graphs at bucketed batch sizes (``vt_core.generation.graphs``). None: on when
    the model is on CUDA and its RoPE is not dynamic (which reads positions back to the host)."""
    batch_buckets: tuple[int, ...] | None = None
    """Padded batch sizes of bucketed decode steps (default with graphs: powers of two up to
    ``max_batch_size``). Given without graphs (e.g. on CPU), padded steps run eagerly."""
    compile_decode: bool = False
    """Run the native CPU decode step through ``torch.compile`` (Inductor fuses the elementwise work around
    the GEMMs; the first step compiles for tens of seconds; ``vt_core.generation.cpu_decode``)."""

    def __post_init__(self) -> None:
        if self.max_tokens_in_cache is not None and self.kv_budget_bytes is not None:
            raise ValueError("Engine: give max_tokens_in_cache or kv_budget_bytes, not both")
        if self.decode_attention not in DECODE_ATTENTION:
            raise ValueError(f"Engine: decode_attention must be one of {', '.join(map(repr, DECODE_ATTENTION))}, "
                             f"got {self.decode_attention!r}")
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"Engine: block_size must be >= 1, got {self.block_size}")
        if self.readback_lag is not None and self.readback_lag < 0:
            raise ValueError(f"Engine: readback_lag must be >= 0, got {self.readback_lag}")
        if self.batch_buckets is not None and max(self.batch_buckets) < self.max_batch_size:
            raise ValueError(f"Engine: the largest of batch_buckets {tuple(self.batch_buckets)} must be >= "
                             f"max_batch_size {self.max_batch_size}")
