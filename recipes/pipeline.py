"""The four-stage VibeThinker pipeline in one run, resumable at any stage.

    python recipes/pipeline.py                        # embedded default: tiny model, shipped tasks, CPU, < 30 min
    python recipes/pipeline.py --quick                # a few steps per stage (the test preset)
    python recipes/pipeline.py --model.path /ckpt/Qwen2.5-Math-1.5B --pipeline.out_dir runs/vt \
        --sft1.data.path sft.jsonl --sft2.data.path sft.jsonl --rl_math.data.path math.jsonl ...
    python recipes/pipeline.py --pipeline.restart_from rl_code      # redo rl_code and everything after it

Stages, each starting from the previous stage's model (out_dir/<stage>/ holds its run):

1. sft1      SFT on the math + code + STEM train splits (reference solutions; pipeline.sft_domains).
2. sft2      SFT on the long traces (sft2.data.min_tokens) with diversity probing every probe.every steps
             (pass@probe.k per subdomain of the probing set); the best checkpoint per subdomain is fused
             by uniform parameter averaging into sft2/fused, the stage's output.
3. rl_math   RL on math (MGPO), then 4. rl_code, then 5. rl_stem.
6. distill   self-distillation: rejection sampling from the three RL experts, learning-potential
             selection, SFT of the rl_stem model on the selection.
7. instruct  SFT on chat instruction data, then instruct RL with the rule validators.

Before the first stage every verifier the stages and the evaluation use is self-checked
(vt_core.rewards.selfcheck). After every stage the held-out eval table (pass@1 +- stderr, pass@k per
domain and subdomain, the fraction of infrastructure failures) is printed and stored.
out_dir/pipeline_state.json lists finished stages with their output folder, eval and wall time; a rerun
skips them and continues (an interrupted stage resumes from its own last checkpoint).
--pipeline.stop_after STAGE stops after a stage. One process (the stages themselves run under torchrun
alone: see their recipes). Every option is a field of PipelineConfig; --help prints them all.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vt_core import model as vt_model
from vt_core.config import format_config, parse_cli, save_config
from vt_core.data import load_tokenizer, tiny_model_config_path, tiny_tokenizer_path
from vt_core.eval import chat_prompts, evaluate, format_table
from vt_core.generation import Engine, SamplingParams
from vt_core.rewards.selfcheck import self_check, verifiers_of
from vt_core.tasks import load_tasks
from vt_core.trainer.common import Device, Domain, OptimConfig, RunConfig, TrainModelConfig
from vt_core.trainer.distill import DistillConfig, run_distill, write_task_sft_data
from vt_core.trainer.probing import DiversityProber, ProbeConfig
from vt_core.trainer.rl import RLAlgoConfig, RLConfig, RLDataConfig, RLEvalConfig, RLGenConfig, run_rl
from vt_core.trainer.sft import SFTConfig, SFTDataConfig, SFTTrainer, run_sft

STAGES = ("sft1", "sft2", "rl_math", "rl_code", "rl_stem", "distill", "instruct")
STAGE_DOMAINS = ("math", "code", "stem", "instruct")
"""Task domains the RL and instruct stages train on (self-checked before the first stage)."""


def _recipe(name: str):
    """A sibling recipe module (recipes/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", Path(__file__).resolve().parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_instruct = _recipe("instruct")


@dataclass
class PipelineRunConfig:
    """Where the pipeline writes, what it runs on and which stages it runs."""

    out_dir: str = "runs/pipeline"
    device: Device = "auto"
    seed: int = 0
    stop_after: str = ""
    """Stop after this stage (a later run resumes with the next)."""
    restart_from: str = ""
    """Forget this stage and every later one in the state file, and run them again."""
    sft_domains: list[Domain] = field(default_factory=lambda: ["math", "code", "stem"])
    """Embedded domains whose train split (reference solutions) is the SFT data of sft1 / sft2 (when their
    data.path is empty)."""
    sft_per_domain: int = 2000
    """Train rows per domain in that SFT data."""


@dataclass
class PipelineEvalConfig:
    """Held-out evaluation printed after every stage (the first N problems of each embedded domain)."""

    domains: list[Domain] = field(default_factory=lambda: ["math", "code", "stem", "instruct"])
    problems: int = 32
    samples: int = 4
    temperature: float = 1.0
    max_new_tokens: int = 96
    ks: list[int] = field(default_factory=lambda: [1, 4])


@dataclass
class PipelineConfig:
    """One config for every stage; each stage's model.path and run.out_dir are set by the pipeline."""

    pipeline: PipelineRunConfig = field(default_factory=PipelineRunConfig)
    model: TrainModelConfig = field(default_factory=TrainModelConfig)
    """The base model (empty path: the embedded tiny model, randomly initialised)."""
    eval: PipelineEvalConfig = field(default_factory=PipelineEvalConfig)
    sft1: SFTConfig = field(default_factory=SFTConfig)
    sft2: SFTConfig = field(default_factory=SFTConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    rl_math: RLConfig = field(default_factory=RLConfig)
    rl_code: RLConfig = field(default_factory=RLConfig)
    rl_stem: RLConfig = field(default_factory=RLConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    instruct: _instruct.InstructConfig = field(default_factory=_instruct.InstructConfig)


def _rl(domain: str, steps: int, minutes: float, max_new_tokens: int, mgpo: float) -> RLConfig:
    return RLConfig(
        optim=OptimConfig(lr=2e-4, warmup_steps=3, min_lr_ratio=0.5),
        run=RunConfig(max_steps=steps, max_minutes=minutes),
        data=RLDataConfig(domain=domain, prompts_per_step=32, group_size=8),
        gen=RLGenConfig(max_new_tokens=max_new_tokens, kv_cache_tokens=65536, reward_workers=4),
        algo=RLAlgoConfig(estimator="grpo", mgpo_lambda=mgpo, drop_zero_variance=True, micro_tokens=8192),
        eval=RLEvalConfig(problems=32, samples=4),
    )


def embedded_default() -> PipelineConfig:
    """The CPU demo (about 20 minutes on two cores; every stage also has a max_minutes cap)."""
    cfg = PipelineConfig(
        sft1=SFTConfig(optim=OptimConfig(lr=2e-3, warmup_steps=10, min_lr_ratio=0.1),
                       run=RunConfig(max_steps=150, max_minutes=3.0),
                       data=SFTDataConfig(examples_per_step=64, max_tokens=4096)),
        sft2=SFTConfig(optim=OptimConfig(lr=5e-4, warmup_steps=2, min_lr_ratio=0.2),
                       run=RunConfig(max_steps=60, max_minutes=2.0),
                       data=SFTDataConfig(examples_per_step=64, max_tokens=4096, min_tokens=70)),
        probe=ProbeConfig(every=20, domain="math", per_subdomain=16, k=4, max_new_tokens=48),
        rl_math=_rl("math", 25, 2.5, 48, 1.0),
        rl_code=_rl("code", 25, 2.5, 40, 1.0),
        rl_stem=_rl("stem", 25, 2.5, 48, 1.0),
        distill=_recipe("distill").embedded_default(),
        instruct=_instruct.embedded_default(),
    )
    cfg.distill.sample.problems_per_domain = 64
    cfg.distill.run.max_steps, cfg.distill.run.max_minutes = 20, 2.0
    cfg.instruct.sft.steps, cfg.instruct.sft.minutes = 60, 1.5
    cfg.instruct.run.max_steps, cfg.instruct.run.max_minutes = 12, 2.5
    cfg.instruct.eval.problems = 32
    return cfg


def quick_preset() -> PipelineConfig:
    """A few steps per stage with tiny batches (tests: a couple of minutes on two cores)."""
    cfg = embedded_default()
    cfg.pipeline.sft_per_domain = 64
    cfg.eval.problems, cfg.eval.samples, cfg.eval.max_new_tokens, cfg.eval.ks = 6, 2, 16, [1, 2]
    for s in (cfg.sft1, cfg.sft2):
        s.run.max_steps, s.data.examples_per_step = 3, 8
    cfg.probe.every, cfg.probe.per_subdomain, cfg.probe.k, cfg.probe.max_new_tokens = 2, 2, 2, 12
    rls = (cfg.rl_math, cfg.rl_code, cfg.rl_stem, cfg.instruct)
    for r in rls:
        r.run.max_steps, r.data.prompts_per_step, r.data.group_size = 1, 2, 2
        r.gen.max_new_tokens, r.eval.problems, r.eval.samples, r.gen.reward_workers = 12, 2, 2, 2
    cfg.distill.sample.problems_per_domain, cfg.distill.sample.samples = 3, 2
    cfg.distill.sample.max_new_tokens, cfg.distill.select.min_tokens = 12, 1
    cfg.distill.run.max_steps, cfg.distill.data.examples_per_step = 2, 4
    cfg.instruct.sft.steps, cfg.instruct.sft.examples_per_step, cfg.instruct.sft.max_examples = 2, 4, 32
    return cfg


def _stage_run(cfg: PipelineConfig, run: RunConfig, stage: str) -> None:
    run.out_dir = str(Path(cfg.pipeline.out_dir) / stage)
    run.device, run.seed, run.resume = cfg.pipeline.device, cfg.pipeline.seed, True


def _stage_model(cfg: PipelineConfig, section: TrainModelConfig, prev: str | None) -> None:
    section.bf16, section.gradient_checkpointing = cfg.model.bf16, cfg.model.gradient_checkpointing
    section.init_seed = cfg.model.init_seed
    section.path = prev or cfg.model.path
    section.tokenizer = "" if prev else cfg.model.tokenizer


def run_stage(cfg: PipelineConfig, stage: str, prev: str | None) -> str:
    """Run one stage from the model folder ``prev`` (None: the base model); returns the stage's model folder."""
    out = Path(cfg.pipeline.out_dir)
    sub = copy.deepcopy(getattr(cfg, stage))
    _stage_run(cfg, sub.run, stage)
    _stage_model(cfg, sub.model, prev)
    if stage in ("sft1", "sft2"):
        if not sub.data.path:
            sub.data.path = str(out / "data" / "sft_mix.jsonl")
            if not Path(sub.data.path).is_file():
                write_task_sft_data(cfg.pipeline.sft_domains, sub.data.path, per_domain=cfg.pipeline.sft_per_domain)
        if stage == "sft1":
            run_sft(sub)
            return str(Path(sub.run.out_dir) / "final")
        trainer = SFTTrainer(sub)
        prober = DiversityProber(cfg.probe, sub.run.out_dir) if cfg.probe.every else None
        if prober:
            trainer.step_hooks.append(prober)
        trainer.fit()
        if not prober:
            return str(Path(sub.run.out_dir) / "final")
        fused = Path(sub.run.out_dir) / "fused"
        summary = prober.fuse(fused)
        print(f"[sft2] fused {len(summary['inputs'])} per-subdomain best checkpoints "
              f"({json.dumps({k: v['step'] for k, v in prober.best.items()})}) into {fused}", flush=True)
        return str(fused)
    if stage.startswith("rl_"):
        run_rl(sub)
        return str(Path(sub.run.out_dir) / "final")
    if stage == "distill":
        state = read_state(cfg)
        sub.sample.teachers = [state["stages"][s]["output"] for s in ("rl_math", "rl_code", "rl_stem")]
        run_distill(sub)
        return str(Path(sub.run.out_dir) / "final")
    return _instruct.run_instruct(sub)["final"]


def evaluate_model(cfg: PipelineConfig, path: str | None) -> dict:
    """Held-out results per domain of the model folder ``path`` (None: the base model)."""
    e = cfg.eval
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.pipeline.device != "cpu" else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if path:
        model, tokenizer = vt_model.load(path, dtype=dtype, device=device), load_tokenizer(path)
    else:
        model = vt_model.from_config(tiny_model_config_path(), dtype=dtype, device=device, seed=cfg.model.init_seed) \
            if not cfg.model.path else vt_model.load(cfg.model.path, dtype=dtype, device=device)
        tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.path or str(tiny_tokenizer_path()))
    engine = Engine(model.eval(), tokenizer, max_tokens_in_cache=65536)
    params = SamplingParams(temperature=e.temperature, max_new_tokens=e.max_new_tokens)
    results = {}
    with torch.no_grad():
        for domain in e.domains:
            problems = load_tasks(domain, "heldout")[: e.problems]
            if domain == "instruct":
                problems = chat_prompts(problems, tokenizer)
            res = evaluate(engine, tokenizer, problems, k=e.samples, params=params, ks=tuple(e.ks), seed=777)
            results[domain] = {k: v for k, v in res.items() if k not in ("rewards", "ids", "infra")}
    engine.free_cache()
    return results


def state_path(cfg: PipelineConfig) -> Path:
    return Path(cfg.pipeline.out_dir) / "pipeline_state.json"


def read_state(cfg: PipelineConfig) -> dict:
    p = state_path(cfg)
    return json.loads(p.read_text()) if p.is_file() else {"stages": {}, "base_eval": None}


def write_state(cfg: PipelineConfig, state: dict) -> None:
    p = state_path(cfg)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, p)


def run_pipeline(cfg: PipelineConfig) -> dict:
    """Run (or continue) the pipeline; returns the state: finished stages with outputs, evals and wall times."""
    for name in (cfg.pipeline.stop_after, cfg.pipeline.restart_from):
        if name and name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    out = Path(cfg.pipeline.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "pipeline_config.json")
    # The embedded domains are named after their verifiers; an RL stage with its own data checks those again.
    domains = sorted({*cfg.eval.domains, *STAGE_DOMAINS})
    checked = self_check(verifiers_of(load_tasks(d, "heldout")[0] for d in domains))
    print("[pipeline] verifier self-check passed: " + ", ".join(f"{v} {t * 1000:.0f} ms" for v, t in checked.items()),
          flush=True)
    state = read_state(cfg)
    if cfg.pipeline.restart_from:
        for s in STAGES[STAGES.index(cfg.pipeline.restart_from):]:
            state["stages"].pop(s, None)
        write_state(cfg, state)
    ks = tuple(cfg.eval.ks)
    if state.get("base_eval") is None:
        state["base_eval"] = evaluate_model(cfg, None)
        write_state(cfg, state)
    print(f"[pipeline] base model\n{format_table(state['base_eval'], ks)}", flush=True)
    prev = None
    for stage in STAGES:
        done = state["stages"].get(stage)
        if done and Path(done["output"], "config.json").is_file():
            print(f"[pipeline] {stage}: done earlier ({done['output']}), skipping", flush=True)
            prev = done["output"]
        else:
            print(f"[pipeline] === {stage} (from {prev or 'the base model'}) ===", flush=True)
            t0 = time.perf_counter()
            output = run_stage(cfg, stage, prev)
            wall = time.perf_counter() - t0
            results = evaluate_model(cfg, output)
            state["stages"][stage] = {"output": output, "eval": results, "wall_s": wall,
                                      "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            write_state(cfg, state)
            prev = output
            print(f"[pipeline] {stage} finished in {wall:.0f}s\n{format_table(results, ks)}", flush=True)
        if stage == cfg.pipeline.stop_after:
            print(f"[pipeline] stopping after {stage} (--pipeline.stop_after); run again to continue", flush=True)
            break
    total = sum(s["wall_s"] for s in state["stages"].values())
    print(f"[pipeline] finished stages: {', '.join(state['stages'])}; stage time {total:.0f}s; model {prev}",
          flush=True)
    return state


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    quick = "--quick" in argv
    if quick:
        argv.remove("--quick")
    cfg = parse_cli(quick_preset() if quick else embedded_default(), argv)
    print(f"[pipeline] resolved config:\n{format_config(cfg)}", flush=True)
    return run_pipeline(cfg)


if __name__ == "__main__":
    main()
