"""RL on code with verifiable rewards: the main job.

    torchrun recipes/rl_code.py                          # embedded default: tiny model, shipped code tasks, CPU
    torchrun --nproc_per_node=2 recipes/rl_code.py       # the same on two processes (gloo on CPU)
    torchrun --nproc_per_node=8 recipes/rl_code.py --model.path /path/Qwen2.5-Coder-3B --data.path problems.jsonl \
        --data.heldout_path heldout.jsonl --gen.max_new_tokens 16384 --optim.lr 1e-6 --run.max_steps 500
    # multi-node: torchrun --nnodes 4 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 recipes/rl_code.py ...

With no --model.path, the embedded default runs: a warm start is made once by this project's own SFT
recipe on the shipped code tasks' train split (cached in --warmstart.dir and reused while its settings
are unchanged), then RL trains it on the train split and held-out pass@1 is printed before and after.
Every option is a field of RLCodeConfig, set as --section.field value; --help prints them all.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vt_core.config import parse_cli
from vt_core.trainer.common import ModelSection, OptimSection, RunSection
from vt_core.trainer.rl import AlgoSection, EvalSection, GenSection, RLConfig, RLData, run_rl
from vt_core.trainer.sft import SFTConfig, SFTData, run_sft


@dataclass
class WarmStart:
    """SFT warm start of the embedded default (ignored when --model.path is given)."""

    dir: str = "runs/warmstart_code"
    """Cache folder: reused when it holds a finished warm start made with the same settings."""
    steps: int = 150
    minutes: float = 3.0
    """Stop the warm-start SFT after this many minutes even if steps remain."""
    lr: float = 2e-3
    examples_per_step: int = 64
    max_examples: int = 6000
    """Train-split examples used for SFT (the RL stage samples from the whole train split)."""


@dataclass
class RLCodeConfig(RLConfig):
    """RL on code; the defaults are the embedded CPU demo."""

    warmstart: WarmStart = field(default_factory=WarmStart)


def embedded_default() -> RLCodeConfig:
    """The preset `torchrun recipes/rl_code.py` runs with no arguments."""
    return RLCodeConfig(
        optim=OptimSection(lr=2e-4, warmup_steps=3, min_lr_ratio=0.5, max_grad_norm=1.0),
        run=RunSection(out_dir="runs/rl_code", max_steps=40, max_minutes=5.0, seed=0),
        data=RLData(domain="code", prompts_per_step=32, group_size=8),
        gen=GenSection(temperature=1.0, max_new_tokens=40, kv_cache_tokens=65536, reward_workers=4),
        algo=AlgoSection(estimator="grpo", drop_zero_variance=True, micro_tokens=8192),
        eval=EvalSection(problems=512, samples=4, temperature=1.0),
    )


def ensure_warm_start(cfg: RLCodeConfig) -> str:
    """Path of the warm-start checkpoint, running the SFT recipe first when the cache is missing or stale."""
    w = cfg.warmstart
    root = Path(w.dir)
    stamp = {"warmstart": asdict(w), "model": asdict(cfg.model), "seed": cfg.run.seed}
    marker = root / "warmstart.json"
    final = root / "final"
    if marker.is_file() and (final / "config.json").is_file() and json.loads(marker.read_text()) == stamp:
        print(f"[rl_code] reusing warm start {final}", flush=True)
        return str(final)
    sft = SFTConfig(
        model=ModelSection(**asdict(cfg.model)),
        optim=OptimSection(lr=w.lr, warmup_steps=10, min_lr_ratio=0.1, max_grad_norm=1.0),
        run=RunSection(out_dir=str(root), max_steps=w.steps, max_minutes=w.minutes, seed=cfg.run.seed,
                       device=cfg.run.device, progress=cfg.run.progress),
        data=SFTData(examples_per_step=w.examples_per_step, max_examples=w.max_examples, max_tokens=4096),
    )
    run_sft(sft)
    if int(os.environ.get("RANK", "0")) == 0:
        marker.write_text(json.dumps(stamp, indent=2))
    return str(final)


def main() -> None:
    cfg = parse_cli(embedded_default())
    if not cfg.model.path:
        cfg.model.path = ensure_warm_start(cfg)
    run_rl(cfg)


if __name__ == "__main__":
    main()
