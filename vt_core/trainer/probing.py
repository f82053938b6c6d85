"""Diversity probing during SFT, and expert fusion of the per-subdomain best checkpoints.

Every ``probe.every`` optimizer steps (and at the last step) the current model samples ``probe.k``
completions for each problem of a probing set and pass@K is computed per subdomain (vt_core.eval). For
every subdomain whose pass@K beats its best so far, the model is saved in Hugging Face format to
``out_dir/probe_best/<subdomain>``; ``out_dir/probe_best/best.json`` records, per subdomain, the step, the
score and the folder (it is re-read on resume, so a resumed run keeps its bests); every probe's scores are
appended to ``probe_best/history.jsonl``. pass@K with K > 1
rewards a model whose samples are diverse (the "diversity" of the spectrum-to-signal principle).
At the end of the stage :meth:`DiversityProber.fuse` merges the best checkpoints with uniform weights
(vt_core.merge.merge_checkpoints), one per subdomain.

Probing set: ``probe.path`` (a local JSONL of problems with a ``subdomain`` field), or the embedded
held-out split of ``probe.domain`` from its end: the last ``probe.per_subdomain`` problems of each
subdomain, so it stays disjoint from evaluations that use the first problems of the split.

    prober = DiversityProber(ProbeConfig(every=20, domain="math"), "runs/sft2")
    trainer = SFTTrainer(cfg); trainer.step_hooks.append(prober); trainer.fit()
    prober.fuse("runs/sft2/fused")
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from vt_core.eval import evaluate
from vt_core.generation import SamplingParams
from vt_core.merge import merge_checkpoints
from vt_core.trainer.common import Domain
from vt_core.trainer.rl import load_problems
from vt_core.trainer.runtime import full_state_dict


@dataclass
class ProbeConfig:
    """Diversity probing during SFT."""

    every: int = 0
    """Probe every N optimizer steps (and at the last step); 0 turns probing off."""
    domain: Domain = "math"
    """Embedded task domain of the probing set (its held-out subdomains), when ``path`` is empty."""
    path: str = ""
    """Local JSONL probing set (prompt + verifier fields + subdomain)."""
    per_subdomain: int = 16
    """Problems per subdomain."""
    k: int = 4
    """Samples per problem; the selection metric is pass@k."""
    temperature: float = 1.0
    max_new_tokens: int = 64
    kv_cache_tokens: int = 65536


def probing_set(cfg: ProbeConfig) -> list[dict]:
    """The probing problems: up to ``per_subdomain`` per subdomain, taken from the end of the source."""
    rows = load_problems(cfg.path, cfg.domain, "heldout")
    by_sub: dict[str, list[dict]] = {}
    for row in reversed(rows):
        sub = str(row.get("subdomain", "all"))
        if len(by_sub.setdefault(sub, [])) < cfg.per_subdomain:
            by_sub[sub].append(row)
    return [r for sub in sorted(by_sub) for r in reversed(by_sub[sub])]


class DiversityProber:
    """A SFTTrainer step hook: probe, keep the best checkpoint per subdomain, fuse them at the end."""

    def __init__(self, cfg: ProbeConfig, out_dir: str | os.PathLike):
        if cfg.k < 1 or cfg.per_subdomain < 1:
            raise ValueError(f"probe.k and probe.per_subdomain must be >= 1, got {cfg.k} and {cfg.per_subdomain}")
        self.cfg = cfg
        self.root = Path(out_dir) / "probe_best"
        self.problems = probing_set(cfg)
        if not self.problems:
            raise ValueError(f"probing set {cfg.path or cfg.domain} is empty")
        self.record = self.root / "best.json"
        self.best: dict[str, dict] = json.loads(self.record.read_text()) if self.record.is_file() else {}
        self.history: list[dict] = []

    def __call__(self, trainer, metrics: dict) -> None:
        if self.cfg.every and (trainer.step % self.cfg.every == 0 or trainer.done()):
            self.probe(trainer)

    def probe(self, trainer) -> dict:
        """Probe the trainer's current model (collective: every process calls it; rank 0 evaluates and saves).
        Returns {subdomain: pass@k} on rank 0 (empty elsewhere)."""
        weights = full_state_dict(trainer.model, trainer.rt)
        scores: dict[str, float] = {}
        if trainer.rt.is_main:
            c = self.cfg
            params = SamplingParams(temperature=c.temperature, max_new_tokens=c.max_new_tokens)
            with torch.no_grad(), trainer.generation_phase(c.kv_cache_tokens, weights) as engine:
                res = evaluate(engine, trainer.tokenizer, self.problems, k=c.k, params=params, ks=(1, c.k),
                               seed=4242 + trainer.step)
            scores = {sub: r[f"pass@{c.k}"] for sub, r in res["by_subdomain"].items()}
            improved = [sub for sub, v in scores.items() if sub not in self.best or v > self.best[sub]["score"]]
            for sub in improved:
                self._save(trainer, weights, sub, scores[sub])
            self.history.append({"step": trainer.step, "scores": scores, "improved": improved})
            self.root.mkdir(parents=True, exist_ok=True)
            with open(self.root / "history.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(self.history[-1]) + "\n")
            trainer.metrics.write(f"[probe] step {trainer.step}: " + ", ".join(
                f"{sub} pass@{c.k} {100 * v:.1f}%{' *' if sub in improved else ''}" for sub, v in scores.items()))
        trainer.rt.barrier()
        return scores

    def _save(self, trainer, weights, sub: str, score: float) -> None:
        dest = self.root / sub
        tmp = self.root / f".{sub}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        trainer.model.save(tmp, state_dict=weights)
        trainer.tokenizer.save_pretrained(tmp)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
        self.best[sub] = {"step": trainer.step, "score": score, "path": str(dest)}
        self.record.write_text(json.dumps(self.best, indent=2, sort_keys=True))

    def fuse(self, output: str | os.PathLike, weights: list[float] | None = None) -> dict:
        """Merge the best checkpoint of every subdomain (uniform weights by default) into ``output``."""
        if not self.best:
            raise ValueError("nothing to fuse: no probe has run (probe.every > 0 and at least one step needed)")
        paths = [self.best[sub]["path"] for sub in sorted(self.best)]
        if len(paths) == 1:
            shutil.rmtree(output, ignore_errors=True)
            shutil.copytree(paths[0], output)
            return {"inputs": paths, "weights": [1.0], "output": str(output)}
        return merge_checkpoints(paths, output, weights, overwrite=True)


__all__ = ["DiversityProber", "ProbeConfig", "probing_set"]
