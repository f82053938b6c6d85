"""Does RL beat more SFT? The main job's held-out pass@1 after SFT + RL against SFT alone continued from the
same warm start for the same wall time, on the same held-out problems with the same evaluation.

    python bench/bench_rl_vs_sft.py                  # the embedded default (about 30 minutes on 2 CPU cores)
    python bench/bench_rl_vs_sft.py --quick          # a smoke run: tiny budgets, figures mean nothing

1. ``torchrun recipes/rl_code.py`` (the main job exactly as the README runs it, plus ``--run.out_dir``) prints
   ``held-out pass@1 before/after``; its RL training time W is the sum of its steps' wall times.
2. ``python recipes/sft.py`` continues the same warm start on the same SFT data (the same simulated teacher,
   ``--data.teacher_accuracy``) for W minutes, with the warm start's own SFT settings (peak lr, batch,
   warmup, floor; the cosine spans twice the steps the warm start's measured step rate fits in W, and may
   end before W) and, as a second contender, at the warm start's final (floor) lr, constant, for all of W.
3. Each SFT model is evaluated by the RL trainer's own held-out evaluation (same problems, samples, seeds,
   temperature), so the three pass@1 figures differ only by the training that made them.
Goal (issue #7): RL ahead of the best SFT contender by at least 3 points.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from harness import REPO_ROOT, bench_argparser, write_record

LINE = re.compile(r"held-out pass@1 (before|after): ([\d.]+)% \(stderr ([\d.]+), pass@(\d+) ([\d.]+)%")


def load_recipe(name: str):
    path = REPO_ROOT / "recipes" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run(cmd: list[str], log: Path) -> str:
    """Run ``cmd`` from the repository root, tee its output to ``log``; return stdout + stderr."""
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT, text=True)
    text = log.read_text()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} ... failed (exit {proc.returncode}); see {log}:\n{text[-3000:]}")
    print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    return text


def parse_eval(text: str) -> dict:
    out = {}
    for label, p1, se, k, pk in LINE.findall(text):
        out[label] = {"pass@1": float(p1), "stderr": float(se), f"pass@{k}": float(pk)}
    if set(out) != {"before", "after"}:
        raise RuntimeError("the main job did not print both held-out pass@1 lines")
    return out


def main() -> None:
    parser = bench_argparser("rl_vs_sft")
    parser.add_argument("--work", type=Path, default=None,
                        help="run folder for the three trainings (default runs/bench_rl_vs_sft; --quick: a temporary "
                             "folder, so smoke runs leave nothing in the tree)")
    parser.add_argument("--reuse-rl", action="store_true",
                        help="take the main job's result from a finished run in WORK/rl (rl.log + metrics) "
                             "instead of rerunning it")
    args = parser.parse_args()
    if args.device != "cpu":
        raise SystemExit("bench_rl_vs_sft measures the embedded CPU default (--device cpu)")
    rl_code = load_recipe("rl_code")
    from vt_core.trainer.rl import RLTrainer

    cfg = rl_code.embedded_default()
    warm = rl_code.ensure_warm_start(cfg)
    if args.work is None:
        args.work = (Path(tempfile.mkdtemp(prefix="bench_rl_vs_sft_")) if args.quick
                     else REPO_ROOT / "runs" / "bench_rl_vs_sft")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    quick = ["--run.max_steps", "2", "--eval.problems", "16", "--eval.samples", "2", "--data.prompts_per_step", "4"]

    # 1. The main job.
    rl_dir = work / "rl"
    main_job = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                "recipes/rl_code.py", "--run.out_dir", str(rl_dir), "--run.progress", "false",
                *(quick if args.quick else [])]
    text = (work / "rl.log").read_text() if args.reuse_rl else run(main_job, work / "rl.log")
    rl_eval = parse_eval(text)
    steps = [json.loads(line) for line in (rl_dir / "metrics.jsonl").read_text().splitlines()]
    rl_train_s = sum(s["step_s"] for s in steps if "step_s" in s)

    # 2. SFT alone from the same warm start for the same wall time.
    w = cfg.warmstart
    ws_steps = [json.loads(line) for line in (Path(warm) / "sft_metrics.jsonl").read_text().splitlines()] \
        if (Path(warm) / "sft_metrics.jsonl").is_file() else []
    step_s = (ws_steps[-1]["time_s"] / ws_steps[-1]["step"]) if ws_steps else 0.5
    sft_steps = max(1, int(2 * rl_train_s / step_s))  # the cosine's length; the wall-time limit may stop it first
    # (contender, step cap, lr options): the constant floor lr has no schedule to fit, so only the wall time
    # stops it; the cosine of the warm start's settings spans sft_steps and may finish before the wall time.
    contenders = {
        "sft_same_settings": (sft_steps, ["--optim.lr", str(w.lr), "--optim.warmup_steps", str(w.warmup_steps),
                                          "--optim.min_lr_ratio", str(w.min_lr_ratio)]),
        "sft_floor_lr": (100 * sft_steps, ["--optim.lr", str(w.lr * w.min_lr_ratio), "--optim.warmup_steps", "0",
                                           "--optim.min_lr_ratio", "1.0"]),
    }
    results = {"rl": {"pass@1": rl_eval["after"]["pass@1"], "pass@1_stderr": rl_eval["after"]["stderr"],
                      "pass@1_before": rl_eval["before"]["pass@1"], "train_s": round(rl_train_s, 1),
                      "steps": len(steps)}}
    evaluator_cfg = rl_code.embedded_default()
    for name, (cap, extra) in contenders.items():
        out = work / name
        shutil.rmtree(out, ignore_errors=True)  # a fresh run (the trainer appends to an existing metrics.jsonl)
        run([sys.executable, "recipes/sft.py", "--model.path", warm, "--run.out_dir", str(out),
             "--run.progress", "false", "--run.max_steps", str(cap),
             "--run.max_minutes", f"{rl_train_s / 60:.3f}", "--data.examples_per_step", str(w.examples_per_step),
             "--data.teacher_accuracy", str(w.teacher_accuracy), *extra], work / f"{name}.log")
        sft_log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        evaluator_cfg.model.path = str(out / "final")
        evaluator_cfg.run.out_dir = str(work / f"{name}_eval")
        evaluator_cfg.run.max_steps = 0
        evaluator_cfg.run.progress = False
        if args.quick:
            evaluator_cfg.eval.problems, evaluator_cfg.eval.samples = 16, 2
        trainer = RLTrainer(evaluator_cfg)
        summary = trainer.evaluate_heldout(f"after {name}")
        trainer.scorer.shutdown()
        trainer.close()
        results[name] = {"pass@1": round(100 * summary["pass@1"], 2),
                         "pass@1_stderr": round(100 * summary["pass@1_stderr"], 2),
                         # a --quick run's wall time can end before the first logged step
                         "train_s": round(sft_log[-1]["time_s"], 1) if sft_log else 0.0,
                         "steps": sft_log[-1]["step"] if sft_log else 0}
    best_sft = max((r["pass@1"] for k, r in results.items() if k != "rl"))
    se = math.hypot(results["rl"]["pass@1_stderr"], max(r["pass@1_stderr"] for k, r in results.items() if k != "rl"))
    results["rl"]["lead_over_best_sft_points"] = round(results["rl"]["pass@1"] - best_sft, 2)
    results["rl"]["lead_stderr_points"] = round(se, 2)
    for name, r in results.items():
        print(f"{name:>20}: held-out pass@1 {r['pass@1']:.1f}% (stderr {r['pass@1_stderr']:.1f}) "
              f"after {r['train_s']:.0f} s of training", flush=True)
    write_record("rl_vs_sft", args, shapes={"embedded_default": asdict(cfg), "warm_start": warm,
                                            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
                 results=results, baseline=None,
                 notes="pass@1 in percent on the held-out code problems; RL = torchrun recipes/rl_code.py")


if __name__ == "__main__":
    main()
