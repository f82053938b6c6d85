"""Self-distillation (vt_core.trainer.distill): the documented selection rule, scoring, rejection sampling,
and KL training against the teacher."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from vt_core import model as vt_model
from vt_core.data import load_tokenizer, tiny_model_config_path, tiny_tokenizer_path, tokenize_prompt_completion
from vt_core.generation.params import Completion
from vt_core.tasks import load_tasks
from vt_core.trainer import distill as D
from vt_core.trainer.common import OptimConfig, RunConfig, TrainModelConfig
from vt_core.trainer.sft import SFTDataConfig


def T(i, domain, pid, tokens, score):
    return D.Trace(domain=domain, problem_id=pid, prompt=f"q{i}", completion=f"a{i}", teacher=0,
                   num_tokens=tokens, score=score)


def fixed_traces():
    return [
        T(0, "math", "p1", 3, 2.0),    # a: shorter than min_tokens -> dropped
        T(1, "math", "p1", 10, 1.0),   # bucket (math, <20): median 1.1, MAD 0.1 -> outlier above 1.545
        T(2, "math", "p2", 10, 1.1),
        T(3, "math", "p3", 12, 1.2),
        T(4, "math", "p4", 8, 0.9),
        T(5, "math", "p5", 9, 9.0),    # c: outlier
        T(6, "math", "p3", 30, 2.0),   # bucket (math, >=20): median 1.5, MAD 0.5, nothing dropped
        T(7, "math", "p6", 25, 1.5),
        T(8, "math", "p7", 40, 0.5),
        T(9, "code", "p1", 10, 0.7),   # bucket (code, <20): keep ceil(0.5 * 2) = 1
        T(10, "code", "p1", 11, 0.8),
    ]


def test_selection_picks_documented_subset():
    cfg = D.DistillSelectConfig(min_tokens=5, length_edges=[20], outlier_mad=3.0, keep_frac=0.5, max_per_problem=1)
    traces = fixed_traces()
    picked = D.select_traces(traces, cfg)
    # d: (math,<20) keeps 3 (1.2), 2 (1.1); (math,>=20) keeps 6 (2.0), 7 (1.5); (code,<20) keeps 10 (0.8)
    # e: math/p3 appears twice (3 and 6) -> only the higher-scored 6 stays
    assert [t.prompt for t in picked] == ["q2", "q6", "q7", "q10"]
    stats = D.selection_stats(traces, picked, cfg)
    assert stats["by_bucket"] == {"code/len0": 2, "math/len0": 6, "math/len1": 3}
    assert stats["selected_by_bucket"] == {"code/len0": 1, "math/len0": 1, "math/len1": 2}
    assert stats["selected_mean_score"] > stats["mean_score"] - 1.0  # the outlier dragged the mean up


def test_selection_without_filters_keeps_everything_and_checks_inputs():
    everything = D.DistillSelectConfig(min_tokens=0, outlier_mad=0.0, keep_frac=1.0, max_per_problem=0)
    traces = fixed_traces()
    assert D.select_traces(traces, everything) == traces
    assert [D.length_bucket(n, [32, 128]) for n in (0, 31, 32, 127, 128, 10_000)] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="score"):
        D.select_traces([T(0, "math", "p", 10, float("nan"))], everything)
    with pytest.raises(ValueError, match="keep_frac"):
        D.select_traces(traces, D.DistillSelectConfig(keep_frac=0.0))


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """A student and a teacher checkpoint folder (different random inits of the tiny model)."""
    root = tmp_path_factory.mktemp("distill")
    tok = load_tokenizer(tiny_tokenizer_path())
    paths = []
    for name, seed in (("student", 0), ("teacher", 1)):
        m = vt_model.from_config(tiny_model_config_path(), seed=seed)
        m.save(root / name)
        tok.save_pretrained(root / name)
        paths.append(str(root / name))
    return root, paths[0], paths[1], tok


def test_score_traces_is_student_nll_per_completion_token(tiny_pair):
    _, student_path, _, tok = tiny_pair
    student = vt_model.load(student_path)
    rows = load_tasks("math", "heldout")[:5]
    traces = [D.Trace("math", r["problem_id"], r["prompt"], r["solution"], 0) for r in rows]
    D.score_traces(student, tok, traces, micro_tokens=128)
    for t in traces:
        ex = tokenize_prompt_completion(tok, t.prompt, t.completion)
        ids = torch.tensor(ex.input_ids)
        with torch.no_grad():
            hidden = student(ids, torch.arange(len(ids)), torch.tensor([0, len(ids)], dtype=torch.int32), len(ids))
            logits = (hidden @ student.lm_head_weight.T).double()
        mask = torch.tensor(ex.loss_mask[1:])
        nll = torch.nn.functional.cross_entropy(logits[:-1][mask], ids[1:][mask], reduction="mean")
        assert t.num_tokens == int(mask.sum())
        assert t.score == pytest.approx(float(nll), rel=1e-4)


def test_rejection_sample_keeps_correct_unique_traces(tiny_pair, monkeypatch):
    _, student_path, teacher_path, _ = tiny_pair
    rows = load_tasks("math", "heldout")[:2]

    class FakeEngine:
        """Teacher t answers each problem with [reference, wrong, reference]: two correct, one repeated."""

        def __init__(self, model, tokenizer, **kw):
            pass

        def generate(self, prompts, params, n=1):
            assert len(prompts) == len(rows) and n == 3
            return [[Completion(token_ids=[5] * (i + 3), logprobs=[], processed_logprobs=[], finish_reason="stop",
                                text=text) for i, text in enumerate([r["solution"], "\\boxed{-1}", r["solution"]])]
                    for r in rows]

        def free_cache(self):
            pass

    monkeypatch.setattr(D, "Engine", FakeEngine)
    s = D.DistillSampleConfig(samples=3, reward_workers=1)
    traces = D.rejection_sample([teacher_path, student_path], rows, s)
    # two problems, one unique correct completion each; the second teacher's duplicates are dropped
    assert [(t.problem_id, t.teacher, t.num_tokens) for t in traces] == [(r["problem_id"], 0, 3) for r in rows]
    assert all(t.completion == r["solution"] and t.domain == "math" for t, r in zip(traces, rows))


def test_write_read_traces_round_trip(tmp_path):
    traces = fixed_traces()[:3] + [D.Trace("instruct", "x", [{"role": "user", "content": "hi"}], "hello", 2, 4, 0.3)]
    path = D.write_traces(traces, tmp_path / "t.jsonl")
    assert D.read_traces(path) == traces


def test_kl_distill_lowers_teacher_student_kl(tiny_pair):
    root, student_path, teacher_path, tok = tiny_pair
    rows = load_tasks("math", "train")[:16]
    traces = [D.Trace("math", r["problem_id"], r["prompt"], r["solution"], 0) for r in rows]
    data = D.write_traces(traces, root / "selection.jsonl")
    examples = D.trace_examples(tok, traces)
    teacher = vt_model.load(teacher_path)
    before = D.mean_kl(vt_model.load(student_path), teacher, examples)
    cfg = D.DistillConfig(
        model=TrainModelConfig(path=student_path),
        optim=OptimConfig(lr=3e-3, warmup_steps=0, min_lr_ratio=1.0),
        run=RunConfig(out_dir=str(root / "run"), max_steps=6, device="cpu", progress=False),
        data=SFTDataConfig(path=str(data), examples_per_step=16, max_tokens=2048),
    )
    cfg.sample.teachers = [teacher_path]
    cfg.distill.mode, cfg.distill.kind = "kl", "forward"
    last = D.DistillTrainer(cfg).fit()
    after = D.mean_kl(vt_model.load(Path(cfg.run.out_dir) / "final"), teacher, examples)
    assert math.isfinite(last["loss"]) and last["loss_tokens"] == sum(e.num_loss_tokens for e in examples)
    assert after < 0.7 * before, (before, after)
