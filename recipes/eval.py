"""Evaluate a checkpoint: k samples per problem with the in-process engine, scored by the domain verifiers.

    python recipes/eval.py                                            # embedded default: tiny random model, math
    python recipes/eval.py --model.path runs/fused --data.sets math,code,stem --sampling.k 8 --out eval.json
    python recipes/eval.py --model.path /ckpt/VibeThinker --data.sets aime25.jsonl,lcb_v6.jsonl \
        --sampling.k 16 --sampling.ks 1,4,16 --sampling.temperature 0.6 --sampling.max_new_tokens 32768

Each entry of --data.sets is a local benchmark file (JSONL / JSON / Parquet in the vt, AIME or LiveCodeBench
row formats of vt_core.eval) or the name of an embedded task domain (vt_core.tasks: code, math, stem,
instruct; --data.split picks the split). Prints the resolved config and a table (pass@1 +- stderr and pass@k
overall and per subdomain) and writes JSON (config, per-set results with per-sample rewards and
infra_error_frac) to --out. Every verifier the sets use is self-checked first (vt_core.rewards.selfcheck);
a set where more than half the samples hit an infrastructure failure stops the evaluation.
One process (generation is single-device); every option is a field of EvalConfig; --help prints them.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from vt_core.config import format_config, parse_cli, to_dict
from vt_core.data import load_tokenizer, tiny_model_config_path, tiny_tokenizer_path
from vt_core.eval import chat_prompts, evaluate, format_table, load_benchmark
from vt_core.generation import Engine, SamplingParams
from vt_core.rewards import RewardScorer
from vt_core.rewards.selfcheck import self_check, verifiers_of


@dataclass
class EvalModelConfig:
    path: str | None = None
    """Checkpoint folder (Hugging Face format); None: the embedded tiny config with random weights."""
    tokenizer: str | None = None
    """Tokenizer folder; None: the checkpoint folder (the embedded tiny tokenizer for the random model)."""
    dtype: str | None = None
    """Weights dtype; None: bfloat16 on CUDA, float32 on CPU."""
    device: str | None = None
    """"cuda", "cpu", ...; None: CUDA when available."""
    seed: int = 0
    """Init seed of the random model (model.path None)."""


@dataclass
class EvalDataConfig:
    sets: list[str] = field(default_factory=lambda: ["math"])
    """Benchmark files and / or embedded task domains, comma separated."""
    split: str = "heldout"
    """Split of the embedded task domains."""
    format: Literal["auto", "vt", "aime", "livecodebench"] = "auto"
    """Row format of benchmark files ("auto": detected per row)."""
    limit: int | None = None
    """Keep the first N problems of each set."""
    chat: bool = True
    """Render plain-text prompts as one user turn with the tokenizer's chat template (as SFT does)."""


@dataclass
class EvalSamplingConfig:
    k: int = 4
    """Samples per problem."""
    ks: list[int] = field(default_factory=lambda: [1, 2, 4])
    """pass@k values to report (those above k are left out)."""
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 1234
    """Problem i is sampled with seed + i: the same model gives the same evaluation."""
    max_tokens_in_cache: int = 65536
    """KV cache size of the engine, in tokens."""


@dataclass
class EvalScoringConfig:
    workers: int = 4
    """Concurrent verifier calls."""
    timeout_s: float = 60.0
    """Wall-clock limit per verifier call."""


@dataclass
class EvalConfig:
    model: EvalModelConfig = field(default_factory=EvalModelConfig)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    sampling: EvalSamplingConfig = field(default_factory=EvalSamplingConfig)
    scoring: EvalScoringConfig = field(default_factory=EvalScoringConfig)
    out: str = "eval.json"
    """Where the JSON results go."""


def load_model(cfg: EvalModelConfig):
    """The model and its tokenizer as the config asks (a random tiny model when no path is given)."""
    import vt_core.model as vm

    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = cfg.dtype or ("bfloat16" if str(device).startswith("cuda") else "float32")
    if cfg.path is None:
        model = vm.from_config(tiny_model_config_path(), dtype=dtype, device=device, seed=cfg.seed)
        tok_dir = cfg.tokenizer or tiny_tokenizer_path()
    else:
        model = vm.load(cfg.path, dtype=dtype, device=device)
        tok_dir = cfg.tokenizer or cfg.path
    return model.eval(), load_tokenizer(tok_dir)


def load_set(entry: str, data: EvalDataConfig) -> tuple[str, list[dict]]:
    """(name, problems) of one --data.sets entry: an existing file, else an embedded task domain."""
    if os.path.exists(entry):
        return Path(entry).stem, load_benchmark(entry, data.format, data.limit)
    from vt_core.tasks import DOMAINS, load_tasks

    if entry not in DOMAINS:
        raise SystemExit(f"error: --data.sets entry {entry!r} is neither a file nor a task domain "
                         f"({', '.join(DOMAINS)})")
    rows = load_tasks(entry, data.split)
    return f"{entry}-{data.split}", rows[: data.limit] if data.limit is not None else rows


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_cli(EvalConfig(), argv)
    print(format_config(cfg))
    s = cfg.sampling
    ks = tuple(k for k in s.ks if 1 <= k <= s.k) or (1,)
    model, tokenizer = load_model(cfg.model)
    engine = Engine(model, tokenizer, max_tokens_in_cache=s.max_tokens_in_cache)
    params = SamplingParams(temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens)
    results: dict[str, dict] = {}
    sets = {entry: load_set(entry, cfg.data) for entry in cfg.data.sets}
    for entry, (_, problems) in sets.items():
        if not problems:
            raise SystemExit(f"error: --data.sets entry {entry!r} holds no problems")
    with RewardScorer(max_workers=cfg.scoring.workers, timeout_s=cfg.scoring.timeout_s) as scorer:
        checked = self_check(verifiers_of(p for _, problems in sets.values() for p in problems), scorer)
        print("verifier self-check passed: " + ", ".join(f"{v} {t * 1000:.0f} ms" for v, t in checked.items()))
        for name, problems in sets.values():
            if cfg.data.chat:
                problems = chat_prompts(problems, tokenizer)
            t0 = time.perf_counter()
            with torch.no_grad():
                res = evaluate(engine, tokenizer, problems, k=s.k, params=params, ks=ks, scorer=scorer, seed=s.seed)
            res["wall_s"] = time.perf_counter() - t0
            results[name] = res
            print(f"{name}: {len(problems)} problems x {s.k} samples in {res['wall_s']:.1f} s, "
                  f"infra_error_frac {res['infra_error_frac']:.3f}")
    table = format_table(results, ks)
    print(table)
    report = {"config": to_dict(cfg), "results": results, "table": table}
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"wrote {cfg.out}")
    return report


if __name__ == "__main__":
    main()
