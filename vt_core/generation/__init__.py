"""In-process generation engine (paged KV cache, continuous batching, seeded fused sampling)."""

from vt_core.generation.config import EngineConfig
from vt_core.generation.engine import Engine
from vt_core.generation.exact import invariance_padding, per_document_attention, score_completions
from vt_core.generation.params import Completion, SamplingParams
from vt_core.generation.scheduler import derive_seed

__all__ = ["Engine", "EngineConfig", "SamplingParams", "Completion", "derive_seed", "score_completions",
           "invariance_padding", "per_document_attention"]
