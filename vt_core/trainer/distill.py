"""Offline self-distillation from RL experts: rejection sampling, learning-potential selection, training.

1. **Rejection sampling** (:func:`rejection_sample`): every teacher checkpoint (e.g. the math, code and
   STEM RL experts) samples ``sample.samples`` completions per problem with the in-process engine; each is
   scored by the problem's verifier and only correct ones are kept (identical completions of one problem
   are kept once, from the first teacher that produced them). Each trace remembers its teacher.
2. **Learning potential** (:func:`score_traces`): the student's length-normalized NLL of the completion
   given the prompt (mean over completion tokens of -log p_student). High: the student would learn a lot
   from the trace; very high: likely noise the student cannot fit.
3. **Selection** (:func:`select_traces`), applied in this order:

   a. drop traces with fewer than ``min_tokens`` completion tokens (too short to teach a reasoning step);
   b. bucket the rest by (domain, length bucket), length buckets split at ``length_edges`` (completion
      tokens; bucket i holds lengths in [edges[i-1], edges[i]));
   c. in each bucket drop outliers: scores above median + ``outlier_mad`` * 1.4826 * MAD of the bucket
      (MAD = median absolute deviation; nothing is dropped when MAD is 0 or ``outlier_mad`` <= 0);
   d. in each bucket keep the ceil(``keep_frac`` * n) highest-scored of the remaining n (mid-to-high
      learning potential: the low-NLL traces the student already knows are dropped first);
   e. across buckets, keep at most ``max_per_problem`` traces per (domain, problem), highest score first
      (0: no cap).

   Ties are broken by the trace's position in the input list, so the result is deterministic; the
   selection is returned in input order.
4. **Training** (:class:`DistillTrainer`): the selection is written as prompt/completion JSONL (plus the
   teacher index per row) and the student is trained on it by the SFT trainer: ``distill.mode="sft"`` is
   plain SFT; ``"kl"`` minimises ``linear_kl_distill`` (forward, reverse or JSD) between the student and the
   teacher that produced each trace on the completion tokens, plus ``ce_weight`` x cross-entropy. Teachers
   are held in memory (frozen, compute dtype) during KL training.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from vt_core import model as vt_model
from vt_core.data import load_tokenizer, pack_examples, tokenize_prompt_completion
from vt_core.eval import encode_prompt
from vt_core.generation import Engine, SamplingParams, derive_seed
from vt_core.kernels import linear_cross_entropy, linear_kl_distill, linear_logprobs
from vt_core.rewards.base import is_correct
from vt_core.rewards.scorer import RewardScorer
from vt_core.trainer.common import SAMPLE_SEED_STRIDE, Domain, load_model_and_tokenizer
from vt_core.trainer.rl import load_problems
from vt_core.trainer.runtime import setup_runtime
from vt_core.trainer.sft import SFTConfig, SFTTrainer
from vt_core.trainer.traces import (
    DistillSelectConfig,
    Trace,
    completion_of,
    length_bucket,
    read_traces,
    select_traces,
    selection_stats,
    write_traces,
)


@dataclass
class DistillSampleConfig:
    """Rejection sampling from the teachers."""

    teachers: list[str] = field(default_factory=list)
    """Teacher checkpoint folders (the RL experts), comma separated on the command line."""
    domains: list[Domain] = field(default_factory=lambda: ["math", "code", "stem"])
    """Embedded task domains whose train split is sampled (ignored when ``path`` is set)."""
    path: str = ""
    """Local JSONL of problems (prompt + verifier fields) instead of the embedded domains."""
    problems_per_domain: int = 64
    """First N train problems of each domain (or of ``path``)."""
    samples: int = 4
    """Samples per problem and teacher."""
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    kv_cache_tokens: int = 65536
    reward_workers: int = 4


@dataclass
class DistillLossConfig:
    """How the student learns from the selection."""

    mode: Literal["sft", "kl"] = "sft"
    """sft (cross-entropy on the traces) | kl (linear_kl_distill against each trace's teacher)."""
    kind: Literal["forward", "reverse", "jsd"] = "forward"
    """forward = KL(teacher || student) | reverse | jsd."""
    temperature: float = 1.0
    ce_weight: float = 0.0
    """kl mode: add this times the cross-entropy on the trace tokens."""


@dataclass
class DistillConfig(SFTConfig):
    """Self-distillation (sections: model = the student, optim, run, data = SFT packing, sample, select, distill).
    ``data.path`` is set to the selection file written under ``run.out_dir``."""

    sample: DistillSampleConfig = field(default_factory=DistillSampleConfig)
    select: DistillSelectConfig = field(default_factory=DistillSelectConfig)
    distill: DistillLossConfig = field(default_factory=DistillLossConfig)


# -- 1. rejection sampling ----------------------------------------------------------------------
def rejection_sample(teachers: list[str], problems: list[dict], s: DistillSampleConfig, *, device="cpu",
                     dtype=None, seed: int = 0) -> list[Trace]:
    """Correct, de-duplicated traces of ``problems`` sampled by every teacher (see the module docstring)."""
    traces: list[Trace] = []
    seen: set[tuple[str, str]] = set()
    scorer = RewardScorer(max_workers=s.reward_workers)
    try:
        for t, path in enumerate(teachers):
            model = vt_model.load(path, dtype=dtype, device=device).eval()
            tokenizer = load_tokenizer(path)
            engine = Engine(model, tokenizer, max_tokens_in_cache=s.kv_cache_tokens)
            params = [SamplingParams(temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens,
                                     seed=derive_seed(seed, t * SAMPLE_SEED_STRIDE + i)) for i in range(len(problems))]
            outs = engine.generate([encode_prompt(tokenizer, p["prompt"]) for p in problems], params, n=s.samples)
            engine.free_cache()
            del engine, model
            futures = [[(c, scorer.submit(p, c.text)) for c in group] for p, group in zip(problems, outs)]
            for p, row in zip(problems, futures):
                pid = str(p.get("problem_id", p.get("id")))
                for c, fut in row:
                    key = (pid, c.text)
                    if is_correct(fut.result().reward) and key not in seen:
                        seen.add(key)
                        traces.append(Trace(domain=str(p.get("domain", "all")), problem_id=pid, prompt=p["prompt"],
                                            completion=c.text, teacher=t, num_tokens=len(c.token_ids)))
    finally:
        scorer.shutdown()
    return traces


# -- 2. learning potential (3. selection is in vt_core.trainer.traces) ------------------------------
def trace_examples(tokenizer, traces: list[Trace]):
    """Traces tokenized as SFT examples (loss on the completion, EOS appended)."""
    return [tokenize_prompt_completion(tokenizer, t.prompt, completion_of(t)) for t in traces]


@torch.no_grad()
def score_traces(model, tokenizer, traces: list[Trace], micro_tokens: int = 8192) -> list[Trace]:
    """Set each trace's ``score`` (student NLL per completion token) and ``num_tokens``; returns ``traces``."""
    examples = trace_examples(tokenizer, traces)
    device = model.lm_head_weight.device
    was_training = model.training
    model.eval()
    for batch in pack_examples(examples, micro_tokens, overflow="truncate"):
        b = batch.to(device)
        hidden = model(b.input_ids, b.position_ids, b.cu_seqlens, b.max_seqlen)
        valid = b.targets != -100
        logp = linear_logprobs(hidden, model.lm_head_weight, b.targets.clamp(min=0)).float()
        for j, idx in enumerate(b.example_ids):
            lo, hi = int(b.cu_seqlens[j]), int(b.cu_seqlens[j + 1])
            m = valid[lo:hi]
            n = int(m.sum())
            traces[idx].num_tokens = n
            traces[idx].score = float(-(logp[lo:hi][m]).sum() / max(n, 1))
    model.train(was_training)
    return traces


# -- SFT data from the embedded tasks (the warm starts of the RL recipes) ----------------------
def write_task_sft_data(domains: list[str], path: str | Path, per_domain: int = 0, chat: bool = False) -> Path:
    """SFT data from the embedded tasks' train split with their reference solutions, as JSONL: rows
    {"prompt", "completion"} (plain text, as RL encodes prompts), or {"messages"} with ``chat`` (rendered
    with the chat template). ``per_domain``: first N rows of each domain (0: all); domains interleave."""
    from vt_core.tasks import chat_messages, load_tasks

    per = [load_tasks(d, "train")[: per_domain or None] for d in domains]
    rows = [r for group in zip(*per) for r in group] + [r for g in per for r in g[min(map(len, per)):]]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            row = {"messages": chat_messages(r)} if chat else {"prompt": r["prompt"], "completion": r["solution"]}
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)
    return path


# -- 4. training --------------------------------------------------------------------------------
@torch.no_grad()
def mean_kl(student, teacher, examples, *, kind: str = "forward", temperature: float = 1.0,
            micro_tokens: int = 8192) -> float:
    """Token-mean divergence between teacher and student over the examples' loss tokens."""
    total, tokens = 0.0, 0
    device = student.lm_head_weight.device
    for batch in pack_examples(examples, micro_tokens, overflow="truncate"):
        b = batch.to(device)
        mask = b.targets != -100
        hs = student(b.input_ids, b.position_ids, b.cu_seqlens, b.max_seqlen)
        ht = teacher(b.input_ids, b.position_ids, b.cu_seqlens, b.max_seqlen)
        total += float(linear_kl_distill(hs, student.lm_head_weight, ht, teacher.lm_head_weight, mask,
                                         temperature=temperature, kind=kind, reduction="sum"))
        tokens += int(mask.sum())
    return total / max(tokens, 1)


class DistillTrainer(SFTTrainer):
    """SFT on the selection; with ``distill.mode="kl"`` the loss is the divergence to each trace's teacher."""

    def __init__(self, cfg: DistillConfig):
        if cfg.distill.mode not in ("sft", "kl"):
            raise ValueError(f"distill.mode must be sft or kl, got {cfg.distill.mode!r}")
        super().__init__(cfg)
        self.stage = "distill"
        self.teachers = []
        if cfg.distill.mode == "kl":
            with open(cfg.data.path, encoding="utf-8") as f:  # TokenizedExample.row is the 1-based line number
                self.teacher_of_row = {n: int(json.loads(line)["teacher"])
                                       for n, line in enumerate(f, start=1) if line.strip()}
            self.teachers = [vt_model.load(p, dtype=self.rt.compute_dtype, device=self.rt.device).eval()
                             .requires_grad_(False) for p in cfg.sample.teachers]

    def train_step(self, examples) -> dict:
        if self.cfg.distill.mode == "sft":
            return super().train_step(examples)
        d = self.cfg.distill
        by_teacher: dict[int, list] = {}
        for e in examples:
            by_teacher.setdefault(self.teacher_of_row[e.row], []).append(e)
        micro = [(t, b) for t in sorted(by_teacher)
                 for b in pack_examples(by_teacher[t], self.cfg.data.max_tokens, overflow=self.cfg.data.overflow)]

        def summed_kl(t: int, b) -> torch.Tensor:
            teacher = self.teachers[t]
            with torch.no_grad():
                t_hidden = teacher(b.input_ids, b.position_ids, b.cu_seqlens, b.max_seqlen)
            hidden = self.model(b.input_ids, b.position_ids, b.cu_seqlens, b.max_seqlen)
            weight = self.model.lm_head_weight  # after forward: unsharded under FSDP2
            loss = linear_kl_distill(hidden, weight, t_hidden.to(hidden.dtype), teacher.lm_head_weight.to(hidden.dtype),
                                     b.loss_mask, temperature=d.temperature, kind=d.kind, reduction="sum")
            if d.ce_weight:
                loss = loss + d.ce_weight * linear_cross_entropy(hidden, weight, b.targets, reduction="sum")
            return loss

        return self.step_over(micro, summed_kl)


def build_selection(cfg: DistillConfig) -> dict:
    """Steps 1-3: sample from the teachers, score with the student, select; writes traces.jsonl (all correct
    traces, scored), selection.jsonl and selection_stats.json under run.out_dir. Returns the stats."""
    s = cfg.sample
    if not s.teachers:
        raise ValueError("distill: give --sample.teachers (one or more RL checkpoint folders)")
    rt = setup_runtime(cfg.run.device, cfg.model.bf16)
    out = Path(cfg.run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if s.path:
        problems = load_problems(s.path, "", "train")[: s.problems_per_domain]
    else:
        problems = [p for dom in s.domains for p in load_problems("", dom, "train")[: s.problems_per_domain]]
    traces = rejection_sample(s.teachers, problems, s, device=rt.device, dtype=rt.compute_dtype, seed=cfg.run.seed)
    if traces:
        student, tokenizer = load_model_and_tokenizer(cfg.model, rt)
        score_traces(student, tokenizer, traces, micro_tokens=cfg.data.max_tokens)
        del student
    selected = select_traces(traces, cfg.select)
    write_traces(traces, out / "traces.jsonl")
    write_traces(selected, out / "selection.jsonl")
    stats = {**selection_stats(traces, selected, cfg.select), "problems": len(problems),
             "samples": len(problems) * s.samples * len(s.teachers), "sample_s": time.perf_counter() - t0}
    (out / "selection_stats.json").write_text(json.dumps(stats, indent=2))
    print(f"[distill] {stats['samples']} samples -> {stats['traces']} correct traces -> {stats['selected']} selected "
          f"(mean NLL/token {stats['mean_score']:.3f} -> {stats['selected_mean_score']:.3f})", flush=True)
    return stats


def run_distill(cfg: DistillConfig) -> dict:
    """Self-distillation end to end (one process samples and selects; training runs on every process).
    The selection is reused when run.resume is set and selection.jsonl exists. Returns the selection stats
    and the last training metrics; the student is written to run.out_dir/final (unchanged, with a warning,
    when no trace was selected)."""
    out = Path(cfg.run.out_dir)
    selection = out / "selection.jsonl"
    if cfg.run.resume and selection.is_file() and (out / "selection_stats.json").is_file():
        stats = json.loads((out / "selection_stats.json").read_text())
    else:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("distill: build the selection with one process first (python recipes/distill.py), "
                             "then train it under torchrun with --run.resume true")
        stats = build_selection(cfg)
    if stats["selected"] == 0:
        if not cfg.model.path:
            raise ValueError("distill: no trace was selected and the student has no --model.path to keep")
        shutil.copytree(cfg.model.path, out / "final", dirs_exist_ok=True)
        print(f"[distill] WARNING: no trace selected ({stats['traces']} correct among {stats['samples']} samples); "
              f"the student is unchanged (copied to {out / 'final'})", flush=True)
        return {"selection": stats, "last": {}}
    cfg.data.path = str(selection)
    last = DistillTrainer(cfg).fit()
    return {"selection": stats, "last": last}


__all__ = [
    "DistillConfig", "DistillTrainer", "DistillLossConfig", "DistillSampleConfig", "DistillSelectConfig", "Trace",
    "build_selection",
    "length_bucket", "mean_kl", "read_traces", "rejection_sample", "run_distill", "score_traces", "select_traces",
    "selection_stats", "trace_examples", "write_task_sft_data", "write_traces",
]
