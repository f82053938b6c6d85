"""What both of bench_trl's comparisons share (bench/bench_trl.py: vt_core vs TRL; bench/trl_optin.py: TRL stock
vs TRL + vt_core's opt-in): the optimizer settings, TRL's TrainingArguments, and the throughput figures added to
the harness' timings.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

BETAS = (0.9, 0.95)
MAX_GRAD_NORM = 1.0


def trl_common_args(out: Path, lr: float, seed: int) -> dict:
    """TrainingArguments shared by both TRL trainers: CPU fp32, no checkpointing/logging/saving, constant LR."""
    from transformers import TrainingArguments

    # transformers 5.x renamed gradient_checkpointing (TRL's default: on) to activation_checkpointing
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return dict(output_dir=str(out), use_cpu=True, bf16=False, fp16=False, **{checkpointing: False},
                learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                adam_beta1=BETAS[0], adam_beta2=BETAS[1], max_grad_norm=MAX_GRAD_NORM, gradient_accumulation_steps=1,
                max_steps=10_000, logging_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True,
                dataloader_num_workers=0, seed=seed)


def summarize(figures: dict, per_step: float, unit: str) -> dict:
    """Add throughputs to the harness' figures: ``unit`` per second of the median wall time of a step, and per
    second of its median process CPU time (steadier on a shared machine: other work there stretches wall time;
    with one thread per contender it is the wall time of a quiet machine, less the sandbox child processes)."""
    figures[unit + "_per_s"] = per_step / (figures["median_ms"] / 1e3)
    figures[unit + "_per_cpu_s"] = per_step / (figures["cpu_time_median_ms"] / 1e3)
    return figures
