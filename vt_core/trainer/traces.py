"""Distillation traces: the :class:`Trace` record, its JSONL form, and the learning-potential selection
(step 3 of vt_core.trainer.distill, whose module docstring states the rule :func:`select_traces` applies)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Trace:
    """One correct completion of one problem, by one teacher."""

    domain: str
    problem_id: str
    prompt: str | list
    completion: str
    teacher: int
    """Index of the teacher checkpoint (in ``sample.teachers``) that sampled it."""
    num_tokens: int = 0
    """Completion tokens (under the student's tokenizer once scored)."""
    score: float = float("nan")
    """Student NLL per completion token (learning potential); NaN until scored."""


@dataclass
class DistillSelectConfig:
    """Which correct traces the student trains on (the rule is in the module docstring)."""

    min_tokens: int = 8
    length_edges: list[int] = field(default_factory=lambda: [32, 128, 512, 2048])
    outlier_mad: float = 3.0
    keep_frac: float = 0.5
    max_per_problem: int = 2


def completion_of(t: Trace):
    """The completion in the prompt's form: text, or one assistant turn when the prompt is a chat."""
    return [{"role": "assistant", "content": t.completion}] if isinstance(t.prompt, list) else t.completion


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def length_bucket(num_tokens: int, edges: list[int]) -> int:
    """Index of the length bucket: the number of edges <= num_tokens."""
    return sum(num_tokens >= e for e in edges)


def select_traces(traces: list[Trace], cfg: DistillSelectConfig) -> list[Trace]:
    """The documented selection (module docstring, steps a-e); returns the kept traces in input order."""
    if not 0.0 < cfg.keep_frac <= 1.0:
        raise ValueError(f"select.keep_frac must be in (0, 1], got {cfg.keep_frac}")
    if any(math.isnan(t.score) for t in traces):
        raise ValueError("select_traces: every trace needs a score (run score_traces first)")
    buckets: dict[tuple[str, int], list[int]] = {}
    for i, t in enumerate(traces):
        if t.num_tokens >= cfg.min_tokens:
            buckets.setdefault((t.domain, length_bucket(t.num_tokens, cfg.length_edges)), []).append(i)
    kept: list[int] = []
    for idx in buckets.values():
        scores = [traces[i].score for i in idx]
        med = _median(scores)
        mad = _median([abs(x - med) for x in scores])
        if cfg.outlier_mad > 0 and mad > 0:
            idx = [i for i in idx if traces[i].score <= med + cfg.outlier_mad * 1.4826 * mad]
        idx = sorted(idx, key=lambda i: (-traces[i].score, i))
        kept.extend(idx[: math.ceil(cfg.keep_frac * len(idx))])
    if cfg.max_per_problem > 0:
        per: dict[tuple[str, str], int] = {}
        capped = []
        for i in sorted(kept, key=lambda i: (-traces[i].score, i)):
            key = (traces[i].domain, traces[i].problem_id)
            if per.get(key, 0) < cfg.max_per_problem:
                per[key] = per.get(key, 0) + 1
                capped.append(i)
        kept = capped
    return [traces[i] for i in sorted(kept)]


def selection_stats(traces: list[Trace], selected: list[Trace], cfg: DistillSelectConfig) -> dict:
    """Counts per (domain, length bucket) before and after selection, and the mean scores."""
    def counts(ts):
        out: dict[str, int] = {}
        for t in ts:
            key = f"{t.domain}/len{length_bucket(t.num_tokens, cfg.length_edges)}"
            out[key] = out.get(key, 0) + 1
        return dict(sorted(out.items()))

    def mean(ts):
        return sum(t.score for t in ts) / len(ts) if ts else float("nan")

    return {"traces": len(traces), "selected": len(selected), "by_bucket": counts(traces),
            "selected_by_bucket": counts(selected), "mean_score": mean(traces), "selected_mean_score": mean(selected)}


def write_traces(traces: list[Trace], path: str | Path) -> Path:
    """JSONL with one row per trace (prompt / completion, so the SFT loader reads it, plus the trace fields)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps({**asdict(t), "completion": completion_of(t)}) + "\n" for t in traces),
                   encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_traces(path: str | Path) -> list[Trace]:
    traces = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if isinstance(row["completion"], list):
                    row["completion"] = row["completion"][0]["content"]
                traces.append(Trace(**row))
    return traces


__all__ = [
    "DistillSelectConfig", "Trace", "completion_of", "length_bucket", "read_traces", "select_traces", "selection_stats",
    "write_traces",
]
