"""Offline self-distillation: rejection-sample the RL experts, select traces by learning potential, train the student.

    python recipes/distill.py --sample.teachers runs/rl_math/final,runs/rl_code/final,runs/rl_stem/final \
        --model.path runs/rl_stem/final --run.out_dir runs/distill                  # embedded tasks, CPU, SFT mode
    python recipes/distill.py --sample.teachers A,B --model.path S --distill.mode kl --distill.kind jsd
    # big runs: build the selection once on one process, then train it on many:
    python recipes/distill.py --sample.teachers A,B --model.path S --run.max_steps 0 --run.out_dir runs/distill
    torchrun --nproc_per_node=8 recipes/distill.py --sample.teachers A,B --model.path S --run.out_dir runs/distill \
        --run.resume true --run.max_steps 500

Sampling, scoring and the selection rule are documented in vt_core/trainer/distill.py (module docstring);
the student is --model.path (default: the last teacher). Writes traces.jsonl, selection.jsonl,
selection_stats.json and the trained student (final/) under --run.out_dir. Every option is a field of
DistillConfig, set as --section.field value; --help prints them all.
"""

from __future__ import annotations

import json

from vt_core.config import parse_cli
from vt_core.trainer.common import OptimConfig, RunConfig
from vt_core.trainer.distill import DistillConfig, run_distill
from vt_core.trainer.sft import SFTDataConfig


def embedded_default() -> DistillConfig:
    """The preset used with only --sample.teachers given (CPU sized)."""
    cfg = DistillConfig(
        optim=OptimConfig(lr=5e-4, warmup_steps=2, min_lr_ratio=0.5),
        run=RunConfig(out_dir="runs/distill", max_steps=30, max_minutes=3.0),
        data=SFTDataConfig(examples_per_step=32, max_tokens=4096),
    )
    cfg.sample.problems_per_domain = 96
    cfg.sample.samples = 4
    cfg.sample.max_new_tokens = 64
    return cfg


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_cli(embedded_default(), argv)
    if not cfg.sample.teachers:
        raise SystemExit("error: give --sample.teachers A[,B...] (RL checkpoint folders)")
    if not cfg.model.path:
        cfg.model.path = cfg.sample.teachers[-1]
    result = run_distill(cfg)
    print(json.dumps(result["selection"], indent=2))
    return result


if __name__ == "__main__":
    main()
