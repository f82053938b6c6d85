"""Instruction tuning: SFT on instruction data with the chat template, then instruct RL with the rule validators.

    torchrun recipes/instruct.py              # embedded default: tiny model, shipped instruct tasks, CPU
    torchrun --nproc_per_node=8 recipes/instruct.py --model.path runs/distill/final --sft.path chat.jsonl \
        --data.path ifeval_train.jsonl --data.heldout_path ifeval.jsonl --run.out_dir runs/instruct

Stage 1 (SFT, --sft.*) trains on chat rows ({"messages": [...]}, loss on assistant turns) written to
<run.out_dir>/sft; the embedded default uses the shipped instruct tasks' train split (prompt + reference
reply). Stage 2 (RL, every other section, verifier "instruct": IFEval-style rules) starts from the SFT
model and writes <run.out_dir>/rl; its prompts are rendered with the chat template as one user turn.
The trained model ends in <run.out_dir>/rl/final. Both stages resume with --run.resume true.
Every option is a field of InstructConfig, set as --section.field value; --help prints them all.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vt_core.config import parse_cli
from vt_core.data import load_tokenizer, tiny_tokenizer_path
from vt_core.eval import chat_prompts
from vt_core.rewards.selfcheck import self_check, verifiers_of
from vt_core.tasks import load_tasks
from vt_core.trainer.common import OptimConfig, RunConfig
from vt_core.trainer.distill import write_task_sft_data
from vt_core.trainer.rl import RLAlgoConfig, RLConfig, RLDataConfig, RLEvalConfig, RLGenConfig, load_problems, run_rl
from vt_core.trainer.sft import SFTConfig, SFTDataConfig, run_sft


@dataclass
class InstructSFTConfig:
    """Stage 1: SFT on chat data."""

    path: str = ""
    """Chat JSONL ({"messages": [...]}) or prompt/completion rows. Empty: the embedded instruct train split."""
    steps: int = 60
    minutes: float = 3.0
    lr: float = 1e-3
    examples_per_step: int = 32
    max_examples: int = 0
    max_tokens: int = 4096


@dataclass
class InstructConfig(RLConfig):
    """Instruction tuning: ``sft`` is stage 1; the RL sections are stage 2 (data.domain "instruct")."""

    sft: InstructSFTConfig = field(default_factory=InstructSFTConfig)


def embedded_default() -> InstructConfig:
    return InstructConfig(
        optim=OptimConfig(lr=2e-4, warmup_steps=3, min_lr_ratio=0.5),
        run=RunConfig(out_dir="runs/instruct", max_steps=20, max_minutes=4.0),
        data=RLDataConfig(domain="instruct", prompts_per_step=16, group_size=8),
        gen=RLGenConfig(temperature=1.0, max_new_tokens=96, kv_cache_tokens=65536, reward_workers=4),
        algo=RLAlgoConfig(estimator="grpo", drop_zero_variance=True, micro_tokens=8192),
        eval=RLEvalConfig(problems=128, samples=4),
    )


def _write_problems(rows: list[dict], path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def prepare_data(cfg: InstructConfig, data_dir: Path) -> tuple[str, str, str]:
    """(SFT data, RL train problems, RL held-out problems): the configured files, or the embedded instruct
    tasks written under data_dir with chat-template prompts (when the tokenizer has a template)."""
    m = cfg.model
    tokenizer = load_tokenizer(m.tokenizer or m.path or str(tiny_tokenizer_path()))
    chat = bool(getattr(tokenizer, "chat_template", None))
    sft = cfg.sft.path or str(write_task_sft_data(["instruct"], data_dir / "instruct_sft.jsonl", chat=chat))
    train = load_problems(cfg.data.path, "instruct", "train")
    heldout = load_problems(cfg.data.heldout_path, "instruct", "heldout") if cfg.data.heldout_path else \
        load_tasks("instruct", "heldout")
    return (sft, _write_problems(chat_prompts(train, tokenizer), data_dir / "instruct_rl_train.jsonl"),
            _write_problems(chat_prompts(heldout, tokenizer), data_dir / "instruct_rl_heldout.jsonl"))


def run_instruct(cfg: InstructConfig) -> dict:
    """SFT then RL; returns {"sft": last SFT metrics, "rl": RL result, "final": the model folder}."""
    root = Path(cfg.run.out_dir)
    sft_path, train_path, heldout_path = prepare_data(cfg, root / "data")
    # before the SFT stage, not only when the RL stage starts (which checks again)
    self_check(verifiers_of([*load_problems(train_path, "instruct", "train"),
                             *load_problems(heldout_path, "instruct", "heldout")]))
    s = cfg.sft
    sft_cfg = SFTConfig(
        model=copy.deepcopy(cfg.model),
        optim=OptimConfig(lr=s.lr, warmup_steps=min(5, s.steps // 4), min_lr_ratio=0.1),
        run=RunConfig(**{**asdict(cfg.run), "out_dir": str(root / "sft"), "max_steps": s.steps,
                          "max_minutes": s.minutes, "save_every": 0}),
        data=SFTDataConfig(path=sft_path, examples_per_step=s.examples_per_step, max_examples=s.max_examples,
                     max_tokens=s.max_tokens),
    )
    sft_last = run_sft(sft_cfg)
    rl_cfg = RLConfig(**{f: copy.deepcopy(getattr(cfg, f)) for f in RLConfig.__dataclass_fields__})
    rl_cfg.model.path = str(root / "sft" / "final")
    rl_cfg.model.tokenizer = ""
    rl_cfg.run.out_dir = str(root / "rl")
    rl_cfg.data.path, rl_cfg.data.heldout_path = train_path, heldout_path
    rl = run_rl(rl_cfg)
    return {"sft": sft_last, "rl": rl, "final": str(root / "rl" / "final")}


def main(argv: list[str] | None = None) -> dict:
    return run_instruct(parse_cli(embedded_default(), argv))


if __name__ == "__main__":
    main()
