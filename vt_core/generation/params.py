"""Request-side types of the generation engine."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SamplingParams:
    """How to sample one request (all n samples of a prompt share it)."""

    temperature: float = 1.0
    """Softmax temperature; 0 means greedy."""
    top_p: float = 1.0
    """Nucleus mass in (0, 1]; 1 disables it."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 disables it."""
    min_p: float = 0.0
    """Drop tokens whose probability is below min_p times the most likely one's; 0 disables it."""
    max_new_tokens: int = 256
    """Upper bound on generated tokens (finish_reason "length" when reached)."""
    stop_token_ids: tuple[int, ...] = ()
    """Token ids that end the sample (kept as its last token). The model's EOS is added unless ignore_eos."""
    stop: tuple[str, ...] = ()
    """Strings that end the sample once they appear in the decoded completion (needs a tokenizer)."""
    ignore_eos: bool = False
    """Do not stop on the model's EOS token."""
    seed: int | None = None
    """Seed of this request: the same seed gives the same samples whatever else is in the batch.
    Sample j of the request uses a seed derived from (seed, j). None draws one from torch's global RNG."""

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"SamplingParams.min_p must be in [0, 1], got {self.min_p}")
        if self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k must be >= 0, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)
        self.stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


@dataclass
class Completion:
    """One generated sample.

    token_ids: generated tokens (a stop token that ended the sample is included, so RL trains on it).
    logprobs: fp32 log-probabilities of those tokens under the raw model distribution (temperature 1,
    no truncation): what the trainer's ``linear_logprobs`` recomputes.
    processed_logprobs: under the distribution actually sampled from (after temperature, top-k, top-p,
    min-p); 0 for greedy.
    sampler_logprobs: with ``Engine(exact_logprobs=True)``, the decode path's raw logprobs (``logprobs`` then
    holds the trainer-exact re-scored values; they differ by ~1e-7); None otherwise.
    finish_reason: "stop" (EOS, a stop id or a stop string) or "length" (max_new_tokens).
    text: the decoded completion when the engine has a tokenizer, else None.
    """

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    processed_logprobs: list[float] = field(default_factory=list)
    sampler_logprobs: list[float] | None = None
    finish_reason: str | None = None
    text: str | None = None
