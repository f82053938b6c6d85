"""Diversity probing during SFT (vt_core.trainer.probing): probing set, best checkpoint per subdomain, fusion."""

from __future__ import annotations

import json

import pytest
import torch

from vt_core import model as vt_model
from vt_core.tasks import load_tasks
from vt_core.trainer import probing
from vt_core.trainer.common import OptimConfig, RunConfig, TrainModelConfig
from vt_core.trainer.distill import write_task_sft_data
from vt_core.trainer.sft import SFTConfig, SFTDataConfig, SFTTrainer


def test_probing_set_takes_the_end_of_each_subdomain():
    cfg = probing.ProbeConfig(domain="math", per_subdomain=3)
    rows = probing.probing_set(cfg)
    heldout = load_tasks("math", "heldout")
    subs = sorted({r["subdomain"] for r in heldout})
    assert [r["subdomain"] for r in rows] == [s for s in subs for _ in range(3)]
    for s in subs:
        tail = [r["id"] for r in heldout if r["subdomain"] == s][-3:]
        assert [r["id"] for r in rows if r["subdomain"] == s] == tail
    with pytest.raises(ValueError, match="probe.k"):
        probing.DiversityProber(probing.ProbeConfig(k=0), "unused")


def test_prober_keeps_best_per_subdomain_resumes_and_fuses(tmp_path, monkeypatch):
    """Scripted pass@k (step 2: a=0.5, b=0.0; step 4: a=0.25, b=0.75): a's best is step 2, b's is step 4;
    the saved folders hold the weights of those steps and the fusion is their mean."""
    scripted = {2: {"a": 0.5, "b": 0.0}, 4: {"a": 0.25, "b": 0.75}}
    snapshots = {}

    def fake_evaluate(engine, tokenizer, problems, *, k, params, ks, seed):
        step = seed - 4242
        snapshots[step] = {n: p.detach().clone() for n, p in engine.model.state_dict().items()}
        return {"by_subdomain": {s: {f"pass@{k}": v} for s, v in scripted[step].items()}}

    monkeypatch.setattr(probing, "evaluate", fake_evaluate)
    data = write_task_sft_data(["math"], tmp_path / "sft.jsonl", per_domain=16)
    cfg = SFTConfig(model=TrainModelConfig(), optim=OptimConfig(lr=1e-2),
                    run=RunConfig(out_dir=str(tmp_path / "sft"), max_steps=4, device="cpu", progress=False),
                    data=SFTDataConfig(path=str(data), examples_per_step=4, max_tokens=1024))
    probe = probing.ProbeConfig(every=2, domain="math", per_subdomain=1, k=2, max_new_tokens=4)
    trainer = SFTTrainer(cfg)
    prober = probing.DiversityProber(probe, cfg.run.out_dir)
    trainer.step_hooks.append(prober)
    trainer.fit()
    assert [h["improved"] for h in prober.history] == [["a", "b"], ["b"]]
    logged = (tmp_path / "sft" / "probe_best" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in logged] == prober.history
    assert {s: (b["step"], b["score"]) for s, b in prober.best.items()} == {"a": (2, 0.5), "b": (4, 0.75)}
    for sub, step in (("a", 2), ("b", 4)):
        saved = vt_model.load(tmp_path / "sft" / "probe_best" / sub).state_dict()
        assert all(torch.equal(saved[n], snapshots[step][n]) for n in saved)
    assert not torch.equal(snapshots[2]["model.embed_tokens.weight"], snapshots[4]["model.embed_tokens.weight"])

    again = probing.DiversityProber(probe, cfg.run.out_dir)  # a resumed stage re-reads its bests
    assert again.best == json.loads((tmp_path / "sft" / "probe_best" / "best.json").read_text()) == prober.best
    summary = again.fuse(tmp_path / "fused")
    assert len(summary["inputs"]) == 2
    fused = vt_model.load(tmp_path / "fused").state_dict()
    for n, v in fused.items():
        torch.testing.assert_close(v, (snapshots[2][n] + snapshots[4][n]) / 2, rtol=1e-6, atol=1e-7)
