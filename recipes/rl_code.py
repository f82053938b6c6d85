"""RL on code with verifiable rewards: the main job.

    torchrun recipes/rl_code.py                          # embedded default: tiny model, shipped code tasks, CPU
    torchrun --nproc_per_node=2 recipes/rl_code.py       # the same on two processes (gloo on CPU)
    torchrun --nproc_per_node=8 recipes/rl_code.py --model.path /path/Qwen2.5-Coder-3B --data.path problems.jsonl \
        --data.heldout_path heldout.jsonl --gen.max_new_tokens 16384 --optim.lr 1e-6 --run.max_steps 500
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \
        recipes/rl_code.py ...                           # multi-node

With no --model.path, the embedded default runs: it starts from the SFT warm start shipped in
vt_core/assets/warmstart_code (made by this recipe's own SFT settings, the --warmstart section; with other
settings, or --warmstart.shipped false, the SFT recipe makes one first, cached in --warmstart.dir), RL
trains it on the train split of the shipped code tasks, and held-out pass@1 is printed before and after.
Every option is a field of RLCodeConfig, set as --section.field value; --help prints them all.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vt_core.assets import ASSETS_DIR
from vt_core.config import parse_cli
from vt_core.trainer.common import OptimConfig, RunConfig, TrainModelConfig
from vt_core.trainer.rl import RLAlgoConfig, RLConfig, RLDataConfig, RLEvalConfig, RLGenConfig, run_rl
from vt_core.trainer.sft import SFTConfig, SFTDataConfig, run_sft

SHIPPED_WARMSTART = ASSETS_DIR / "warmstart_code"


@dataclass
class WarmStartConfig:
    """SFT warm start of the embedded default (ignored when --model.path is given)."""

    shipped: bool = True
    """Start from the warm start shipped in vt_core/assets/warmstart_code when it was made with exactly
    these settings (its warmstart.json records them); otherwise, or with false, make one with the SFT
    recipe (cached in ``dir``)."""
    only: bool = False
    """Make (or find) the warm start, print its path and exit (`--warmstart.shipped false --warmstart.only
    true` reruns the SFT settings the shipped one was made with; its warmstart.json names the command)."""
    dir: str = "runs/warmstart_code"
    """Cache folder of a warm start made here: reused while its settings are unchanged."""
    steps: int = 3000
    minutes: float = 0.0
    """Also stop the SFT after this many minutes (0: no limit; a limit makes the result machine-dependent)."""
    lr: float = 3e-3
    warmup_steps: int = 20
    min_lr_ratio: float = 0.05
    examples_per_step: int = 16
    max_examples: int = 0
    """Train-split examples used for SFT (0: all 20,000; the RL stage samples from the whole train split)."""
    teacher_accuracy: float = 0.75
    """Fraction of the SFT traces that are right; the rest are a simulated teacher's slips (see
    SFTDataConfig.teacher_accuracy). SFT imitates its teacher, slips included; RL's verifiable reward does not."""


@dataclass
class RLCodeConfig(RLConfig):
    """RL on code; the defaults are the embedded CPU demo."""

    warmstart: WarmStartConfig = field(default_factory=WarmStartConfig)


def embedded_default() -> RLCodeConfig:
    """The preset `torchrun recipes/rl_code.py` runs with no arguments: 10 minutes of RL (or 200 steps) on 2 CPU
    cores from the shipped warm start, evaluated on all 1,024 held-out problems x 4 samples at temperature 1;
    each group's prompt is forwarded once in training (share_prompts)."""
    return RLCodeConfig(
        optim=OptimConfig(lr=2e-4, warmup_steps=3, min_lr_ratio=0.5, max_grad_norm=1.0),
        run=RunConfig(out_dir="runs/rl_code", max_steps=200, max_minutes=10.0, seed=0),
        data=RLDataConfig(domain="code", prompts_per_step=32, group_size=8),
        gen=RLGenConfig(temperature=1.0, max_new_tokens=16, kv_cache_tokens=65536, reward_workers=4),
        algo=RLAlgoConfig(estimator="grpo", drop_zero_variance=True, micro_tokens=8192, share_prompts=True),
        eval=RLEvalConfig(problems=1024, samples=4, temperature=1.0),
    )


def warm_start_stamp(cfg: RLCodeConfig) -> dict:
    """What determines the warm start: its SFT settings, the model section and the seed."""
    w = {k: v for k, v in asdict(cfg.warmstart).items() if k not in ("shipped", "only", "dir")}
    return {"warmstart": w, "model": asdict(cfg.model), "seed": cfg.run.seed}


def ensure_warm_start(cfg: RLCodeConfig) -> str:
    """Path of the warm-start checkpoint: the shipped one when its settings match, else a cached one made
    by the SFT recipe (made first when the cache is missing or stale). A finished warm start folder holds
    the model, the tokenizer, warmstart.json (the stamp) and sft_metrics.jsonl (the SFT run's log), so
    shipping one is `cp -r <dir>/final vt_core/assets/warmstart_code`."""
    w = cfg.warmstart
    stamp = warm_start_stamp(cfg)
    final = Path(w.dir) / "final"
    candidates = ([SHIPPED_WARMSTART] if w.shipped else []) + [final]
    for folder in candidates:
        marker = folder / "warmstart.json"
        if marker.is_file() and (folder / "config.json").is_file() and json.loads(marker.read_text())["stamp"] == stamp:
            print(f"[rl_code] using the warm start in {folder}", flush=True)
            return str(folder)
    sft = SFTConfig(
        model=TrainModelConfig(**asdict(cfg.model)),
        optim=OptimConfig(lr=w.lr, warmup_steps=w.warmup_steps, min_lr_ratio=w.min_lr_ratio, max_grad_norm=1.0),
        run=RunConfig(out_dir=w.dir, max_steps=w.steps, max_minutes=w.minutes, seed=cfg.run.seed,
                       device=cfg.run.device, progress=cfg.run.progress),
        data=SFTDataConfig(examples_per_step=w.examples_per_step, max_examples=w.max_examples, max_tokens=4096,
                     teacher_accuracy=w.teacher_accuracy),
    )
    last = run_sft(sft)
    if int(os.environ.get("RANK", "0")) == 0:
        shutil.copyfile(Path(w.dir) / "metrics.jsonl", final / "sft_metrics.jsonl")
        record = {"stamp": stamp, "final_loss": last.get("loss")}
        (final / "warmstart.json").write_text(json.dumps(record, indent=2) + "\n")
    return str(final)


def main() -> None:
    cfg = parse_cli(embedded_default())
    if not cfg.model.path:
        cfg.model.path = ensure_warm_start(cfg)
        if cfg.warmstart.only:
            print(f"[rl_code] warm start: {cfg.model.path}", flush=True)
            return
    run_rl(cfg)


if __name__ == "__main__":
    main()
