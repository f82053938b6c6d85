"""RL on math with verifiable rewards (math-verify on \\boxed{} answers), starting from a given checkpoint.

    torchrun recipes/rl_math.py               # embedded default: tiny model, shipped math tasks, CPU
    torchrun --nproc_per_node=8 recipes/rl_math.py --model.path runs/sft2/fused --data.path math.jsonl \
        --data.heldout_path aime.jsonl --gen.max_new_tokens 16384 --algo.mgpo_lambda 1.0 --run.max_steps 300

With no --model.path a warm start is made once by SFT on the shipped math tasks' train split (cached in
--warmstart.dir, reused while its settings are unchanged). Every option is a field of RLDomainConfig,
set as --section.field value; --help prints them all.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vt_core.config import parse_cli
from vt_core.trainer.common import OptimConfig, RunConfig, TrainModelConfig
from vt_core.trainer.distill import write_task_sft_data
from vt_core.trainer.rl import RLAlgoConfig, RLConfig, RLDataConfig, RLEvalConfig, RLGenConfig, run_rl
from vt_core.trainer.sft import SFTConfig, SFTDataConfig, run_sft


@dataclass
class DomainWarmStartConfig:
    """SFT warm start of the embedded default (ignored when --model.path is given)."""

    dir: str = ""
    """Cache folder (empty: runs/warmstart_<domain>)."""
    steps: int = 120
    minutes: float = 3.0
    lr: float = 2e-3
    examples_per_step: int = 64


@dataclass
class RLDomainConfig(RLConfig):
    """RL on one embedded domain (data.domain); the defaults are the embedded CPU demo."""

    warmstart: DomainWarmStartConfig = field(default_factory=DomainWarmStartConfig)


def embedded_default(domain: str = "math") -> RLDomainConfig:
    """The preset `torchrun recipes/rl_<domain>.py` runs with no arguments."""
    return RLDomainConfig(
        optim=OptimConfig(lr=2e-4, warmup_steps=3, min_lr_ratio=0.5, max_grad_norm=1.0),
        run=RunConfig(out_dir=f"runs/rl_{domain}", max_steps=30, max_minutes=4.0, seed=0),
        data=RLDataConfig(domain=domain, prompts_per_step=32, group_size=8),
        gen=RLGenConfig(temperature=1.0, max_new_tokens=48, kv_cache_tokens=65536, reward_workers=4),
        algo=RLAlgoConfig(estimator="grpo", mgpo_lambda=1.0, drop_zero_variance=True, micro_tokens=8192),
        eval=RLEvalConfig(problems=256, samples=4, temperature=1.0),
    )


def ensure_warm_start(cfg: RLDomainConfig) -> str:
    """Path of the warm start of cfg.data.domain, running SFT on its train split when the cache is stale."""
    w, domain = cfg.warmstart, cfg.data.domain
    root = Path(w.dir or f"runs/warmstart_{domain}")
    stamp = {"warmstart": asdict(w), "domain": domain, "model": asdict(cfg.model), "seed": cfg.run.seed}
    marker, final = root / "warmstart.json", root / "final"
    if marker.is_file() and (final / "config.json").is_file() and json.loads(marker.read_text()) == stamp:
        print(f"[rl_{domain}] reusing warm start {final}", flush=True)
        return str(final)
    data = write_task_sft_data([domain], root / "sft_data.jsonl")
    run_sft(SFTConfig(
        model=TrainModelConfig(**asdict(cfg.model)),
        optim=OptimConfig(lr=w.lr, warmup_steps=10, min_lr_ratio=0.1, max_grad_norm=1.0),
        run=RunConfig(out_dir=str(root), max_steps=w.steps, max_minutes=w.minutes, seed=cfg.run.seed,
                       device=cfg.run.device, progress=cfg.run.progress),
        data=SFTDataConfig(path=str(data), examples_per_step=w.examples_per_step, max_tokens=4096),
    ))
    if int(os.environ.get("RANK", "0")) == 0:
        marker.write_text(json.dumps(stamp, indent=2))
    return str(final)


def main(argv: list[str] | None = None, domain: str = "math") -> dict:
    cfg = parse_cli(embedded_default(domain), argv)
    if not cfg.model.path:
        cfg.model.path = ensure_warm_start(cfg)
    return run_rl(cfg)


if __name__ == "__main__":
    main()
