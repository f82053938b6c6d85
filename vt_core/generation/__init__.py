"""In-process generation engine (paged KV cache, continuous batching, seeded fused sampling)."""

from vt_core.generation.engine import Engine, derive_seed
from vt_core.generation.exact import invariance_padding, per_document_attention, score_completions
from vt_core.generation.params import Completion, SamplingParams

__all__ = ["Engine", "SamplingParams", "Completion", "derive_seed", "score_completions", "invariance_padding", "per_document_attention"]
