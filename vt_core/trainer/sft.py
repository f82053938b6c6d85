"""The SFT stage: packed micro-batches by token budget, loss on assistant / completion tokens only,
through ``linear_cross_entropy`` (no [T, V] logits).

A step consumes ``data.examples_per_step`` examples (the global batch, in a seeded per-epoch order),
packs them by first-fit decreasing into micro-batches of at most ``data.max_tokens`` tokens, and gives
micro-batch i to process i % world_size. The loss is the mean over every loss token of the global
batch. The data position (epoch, index) is part of the checkpoint, so a resumed run sees the same data.
Stage 2 of the two-stage curriculum is the same stage with ``data.min_tokens`` selecting long traces.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import torch

from vt_core.data import PackedBatch, TokenizedExample, load_examples, pack_examples, tokenize_row
from vt_core.kernels import linear_cross_entropy
from vt_core.trainer.common import OptimConfig, RunConfig, TrainerCore, TrainModelConfig


@dataclass
class SFTDataConfig:
    """What to train on."""

    path: str = ""
    """Local JSONL / Parquet / save_to_disk data (chat `messages` or prompt/completion rows).
    Empty: the embedded code tasks' train split with their reference solutions."""
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    max_tokens: int = 4096
    """Token budget of one packed micro-batch."""
    examples_per_step: int = 64
    """Global batch size in examples."""
    min_tokens: int = 0
    """Keep only examples of at least this many tokens (stage 2: long traces); 0 keeps all."""
    max_examples: int = 0
    """Use only the first N examples (0: all)."""
    overflow: Literal["truncate", "error"] = "truncate"
    """Examples longer than max_tokens: truncate | error."""
    teacher_accuracy: float = 1.0
    """Embedded code tasks only: the fraction of SFT traces that are right. Below 1 the rest are a simulated
    teacher's slips (tasks.code_problems.teacher_rows: a sibling template or a constant one off), as in
    distillation from a teacher's unverified samples; 1 trains on the reference solutions."""


@dataclass
class SFTConfig:
    """SFT stage config (sections: model, optim, run, data)."""

    model: TrainModelConfig = field(default_factory=TrainModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/sft"))
    data: SFTDataConfig = field(default_factory=SFTDataConfig)


def load_sft_examples(data: SFTDataConfig, tokenizer) -> list[TokenizedExample]:
    """Tokenized training examples (with loss masks) after the stage-2 length filter."""
    if not 0.0 < data.teacher_accuracy <= 1.0:
        raise ValueError(f"--data.teacher_accuracy must be in (0, 1], got {data.teacher_accuracy}")
    if data.path:
        if data.teacher_accuracy != 1.0:
            raise ValueError(f"--data.teacher_accuracy {data.teacher_accuracy} simulates the teacher of the embedded "
                             f"code tasks; with --data.path {data.path} the data is what it is (leave it at 1)")
        examples = load_examples(data.path, tokenizer, prompt_field=data.prompt_field,
                                 completion_field=data.completion_field)
    else:
        from vt_core.tasks import load_code_tasks
        from vt_core.tasks.code_problems import TEACHER_SEED, teacher_rows

        rows = load_code_tasks("train")
        if data.teacher_accuracy < 1.0:
            rows = teacher_rows(rows, data.teacher_accuracy, TEACHER_SEED)
        examples = [tokenize_row(tokenizer, row, completion_field="solution") for row in rows]
    if data.max_examples:
        examples = examples[: data.max_examples]
    if data.min_tokens:
        examples = [e for e in examples if len(e.input_ids) >= data.min_tokens]
    if not examples:
        raise ValueError(f"SFT data {data.path or 'embedded code tasks'}: no examples left "
                         f"(min_tokens={data.min_tokens}, max_examples={data.max_examples})")
    return examples


class SFTTrainer(TrainerCore):
    def __init__(self, cfg: SFTConfig):
        super().__init__(cfg, "sft")
        self.examples = load_sft_examples(cfg.data, self.tokenizer)
        self.state.setdefault("epoch", 0)
        self.state.setdefault("index", 0)
        self.step_hooks: list = []  # hook(trainer, metrics), every process, after each step (e.g. probing)

    def _order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.cfg.run.seed * 1000003 + epoch)
        return torch.randperm(len(self.examples), generator=g).tolist()

    def next_examples(self) -> list[TokenizedExample]:
        """The next global batch, continuing across epochs."""
        n = self.cfg.data.examples_per_step
        out: list[TokenizedExample] = []
        order = self._order(self.state["epoch"])
        while len(out) < n:
            if self.state["index"] >= len(order):
                self.state["epoch"] += 1
                self.state["index"] = 0
                order = self._order(self.state["epoch"])
            take = order[self.state["index"] : self.state["index"] + n - len(out)]
            out.extend(self.examples[i] for i in take)
            self.state["index"] += len(take)
        return out

    def train_step(self, examples: list[TokenizedExample]) -> dict:
        """Forward/backward over the global batch of examples, then one optimizer step."""
        micro = pack_examples(examples, self.cfg.data.max_tokens, overflow=self.cfg.data.overflow)

        def summed_ce(_, batch) -> torch.Tensor:
            hidden = self.model(batch.input_ids, batch.position_ids, batch.cu_seqlens, batch.max_seqlen)
            weight = self.model.lm_head_weight  # after forward: unsharded under FSDP2
            return linear_cross_entropy(hidden, weight, batch.targets, reduction="sum")

        return self.step_over([(None, b) for b in micro], summed_ce)

    def step_over(self, micro: list[tuple[object, PackedBatch]], summed_loss) -> dict:
        """One optimizer step over the global batch ``micro`` of (key, PackedBatch) pairs, the same list on
        every process: this process takes items i % world_size == rank, and backpropagates each one's
        ``summed_loss(key, batch_on_device)`` divided by the global number of loss tokens, so the step sees
        the token mean over the whole global batch. Returns the step's metrics."""
        rt = self.rt
        global_tokens = sum(int(b.loss_mask.sum()) for _, b in micro)
        loss_sum, tokens = 0.0, 0
        mine = micro[rt.rank :: rt.world_size]
        most = rt.all_reduce_max(len(mine))
        for key, batch in mine:
            batch = batch.to(rt.device)
            loss = summed_loss(key, batch) / max(global_tokens, 1)
            self.backward(loss, 1.0)
            loss_sum += float(loss.detach()) * global_tokens
            tokens += batch.num_tokens
        self.idle_passes(len(mine), most)
        loss_sum, tokens = rt.all_reduce_sum([loss_sum, float(tokens)])
        loss_value = loss_sum / max(global_tokens, 1)
        stats = self.optimizer_step(loss_value)
        return {"loss": loss_value, "tokens": tokens, "loss_tokens": global_tokens, **stats}

    def fit(self) -> dict:
        """Train until max_steps or max_minutes; returns the last step's metrics."""
        last: dict = {}
        save_every = self.cfg.run.save_every
        while not self.done():
            t0 = time.perf_counter()
            metrics = self.train_step(self.next_examples())
            metrics["tokens_per_s"] = metrics["tokens"] / max(time.perf_counter() - t0, 1e-9)
            metrics["epoch"] = self.state["epoch"] + self.state["index"] / len(self.examples)
            self.metrics.log(self.step, metrics)
            last = metrics
            for hook in self.step_hooks:
                hook(self, metrics)
            if save_every and self.step % save_every == 0 and not metrics["skipped"]:
                self.save()
        self.save()
        self.save_final()
        self.close()
        return last


def run_sft(cfg: SFTConfig) -> dict:
    trainer = SFTTrainer(cfg)
    return trainer.fit()


__all__ = ["SFTConfig", "SFTDataConfig", "SFTTrainer", "run_sft", "load_sft_examples"]
