"""The RL stage's config: one dataclass per section (``--data.*``, ``--gen.*``, ``--algo.*``, ``--loss.*``,
``--eval.*``, plus the shared ``--model.*``, ``--optim.*``, ``--run.*``). What the options do is in
vt_core.trainer.rl."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vt_core.kernels import RLLossConfig
from vt_core.trainer.common import Domain, OptimConfig, RunConfig, TrainModelConfig


@dataclass
class RLDataConfig:
    """Problems to train and evaluate on."""

    path: str = ""
    """Local JSONL of problems (prompt + verifier fields). Empty: the embedded tasks of ``domain``."""
    heldout_path: str = ""
    """Held-out problems for before/after evaluation. Empty: the embedded held-out split."""
    domain: Domain = "code"
    """Embedded task set used when the paths are empty: code | math | stem | instruct."""
    prompts_per_step: int = 64
    group_size: int = 8
    """Samples per prompt (the GRPO group)."""
    max_prompt_tokens: int = 1024
    """Longer prompts are dropped when the stage starts (counted in the log)."""


@dataclass
class RLGenConfig:
    """Sampling during RL."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    kv_cache_tokens: int = 262144
    """KV cache size of the engine, in tokens."""
    reward_workers: int = 4
    """Verifier threads (each code verification runs in its own sandboxed process)."""
    exact_logprobs: bool = False
    """Record the sampler's logprobs with the trainer's own forward (Engine(exact_logprobs=True)) and run the
    training forward in the same batch-invariant form (per-document attention, invariance padding), so the
    ratio's denominator is exactly the trainer's: sampler_logp_diff is 0 in fp32 on CPU. Costs one extra
    forward over the rollout and a slower attention in training."""


@dataclass
class RLAlgoConfig:
    """Advantages, filtering and shaping."""

    estimator: Literal["grpo", "dr_grpo", "rloo", "reinforce_pp"] = "grpo"
    """grpo | dr_grpo | rloo | reinforce_pp."""
    mgpo_lambda: float = 0.0
    """MGPO weight exp(-lambda * KL(p || 0.5)) on each group's advantages; 0 is plain GRPO."""
    drop_zero_variance: bool = True
    """Drop groups whose rewards are all equal before backward (dynamic filtering)."""
    overlong_buffer: int = 0
    """Linear overlong penalty over the last N tokens of max_new_tokens (0: off)."""
    overlong_coef: float = 1.0
    long2short_lambda: float = 0.0
    """Zero-sum Long2Short bonus for shorter correct answers (0: off; VibeThinker uses 0.2)."""
    updates_per_batch: int = 1
    """Optimizer steps per rollout batch; > 1 switches to old-logprob mode."""
    micro_tokens: int = 8192
    """Token budget of one packed training micro-batch."""
    share_prompts: bool = False
    """Training forward with each group's prompt once (vt_core.data.pack_rl_shared): the same loss and
    gradients, (L - 1) + sum(1 + |c|) tokens per group instead of sum(L + |c|). Its attention is a dense masked
    SDPA per (sub-)group, so it is for short completions, as in the embedded default; not with
    --gen.exact_logprobs (whose bitwise forward is the unshared one)."""
    share_max_tokens: int = 2048
    """With share_prompts: groups are split into sub-groups of at most this many tokens (the dense mask's
    width), and a step with a (prompt, completion) pair longer than this trains unshared (pack_rl)."""


@dataclass
class RLEvalConfig:
    """Held-out evaluation before and after training (and every N steps)."""

    problems: int = 256
    """Held-out problems evaluated (the first N)."""
    samples: int = 4
    """Samples per problem (pass@1 is their mean; pass@k from the same samples)."""
    temperature: float = 1.0
    every: int = 0
    """Also evaluate every N steps (0: only before and after)."""


@dataclass
class RLConfig:
    """RL stage config (sections: model, optim, run, data, gen, algo, loss, eval)."""

    model: TrainModelConfig = field(default_factory=TrainModelConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-6, max_grad_norm=1.0))
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/rl"))
    data: RLDataConfig = field(default_factory=RLDataConfig)
    gen: RLGenConfig = field(default_factory=RLGenConfig)
    algo: RLAlgoConfig = field(default_factory=RLAlgoConfig)
    loss: RLLossConfig = field(default_factory=RLLossConfig)
    eval: RLEvalConfig = field(default_factory=RLEvalConfig)


__all__ = ["RLConfig", "RLDataConfig", "RLGenConfig", "RLAlgoConfig", "RLEvalConfig"]
