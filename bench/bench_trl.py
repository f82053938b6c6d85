"""vt_core's RL and SFT trainers against TRL's GRPOTrainer and SFTTrainer on CPU, side by side.

    OMP_NUM_THREADS=1 python bench/bench_trl.py --device cpu            # full run (~5-10 min on 2 busy cores)
    OMP_NUM_THREADS=1 python bench/bench_trl.py --device cpu --quick    # smoke test (tests/test_bench_trl.py)
    OMP_NUM_THREADS=1 python bench/bench_trl.py --device cpu --optin --steps 3   # TRL stock / + Liger / + vt_core

Both contenders train the same model: the embedded tiny Qwen2 config, randomly initialised by
``vt_core.model.from_config`` (seed 0) and saved in Hugging Face format to a temporary folder, from which
vt_core loads it (``--model.path``) and transformers loads it for TRL (float32, SDPA attention). Both run
fp32 on CPU with the same number of intra-op threads (``--threads``, default 1; OMP_NUM_THREADS is set to it
before torch is imported), no gradient checkpointing (TRL's default is on: turned off), AdamW with betas
(0.9, 0.95), no weight decay, a constant learning rate and gradient clipping at 1.0.

RL: one step = sample ``--group`` completions for each of ``--prompts`` prompts (temperature 1.0, no
top-k/top-p, at most ``--new-tokens`` tokens, EOS ends a completion), score them with the "code"
verifier (vt_core.rewards; each completion runs in the sandbox against the problem's hidden tests, after
the row's ``response_prefix``), group advantages (GRPO), token-mean clipped policy loss (eps 0.2, no KL,
no reference model), backward, one optimizer step. vt_core: ``RLTrainer`` (in-process Engine, rewards
scored on ``--reward-workers`` threads while other samples still generate, ``linear_rl_loss``; each group's
prompt forwarded once in training unless ``--share-prompts false``), its step
being the body of ``RLTrainer.fit`` without metric logging. TRL: ``GRPOTrainer`` with transformers'
``generate`` (no vLLM), ``loss_type="dapo"`` (token mean over the batch), ``num_iterations=1`` and one
generation batch per optimizer step (so no old-logprob pass), ``beta=0``; its reward function scores the
batch with the same verifier on a RewardScorer of ``--reward-workers`` threads (looking the row up by id).
Prompts: a pool of rows of the embedded code tasks' train split (``--prompts`` per step times the steps
run), the same pool for both, in each trainer's own shuffled order; prompts tokenize identically (checked).
The model is random, so nearly every reward is 0: vt_core's dynamic filtering of zero-variance groups is
turned off (``algo.drop_zero_variance=False``) so that it, like TRL, runs loss and backward over every
sample of every step.

SFT: one step = one optimizer step over ``--sft-batch`` examples (prompt + reference solution + EOS of
the embedded code tasks, tokenized once by vt_core; TRL gets the same token ids and completion masks as a
pre-tokenized dataset), loss on completion tokens only. vt_core: ``SFTTrainer.train_step`` (packing into
one micro-batch, ``linear_cross_entropy``). TRL: ``SFTTrainer`` with ``padding_free=True`` (the batch
flattened into one sequence with position_ids; no packing across steps, so a step holds the same
examples) and ``completion_only_loss=True``; for reference also TRL with its default padded batches
(``sft_trl_padded``: right padding and an attention mask). tokens/s counts every token of the step's
sequences (padding not counted).

Timing: the shared harness' ``measure_many`` (one warm-up step each, then ``--steps`` timed steps,
interleaved round-robin, then one profiled step for peak memory). TRL's ``train()`` runs in a helper
thread that pauses after every optimizer step (a TrainerCallback's ``on_step_end``), so one call of the
timed function is one full iteration of its training loop: logging hooks, batch fetch and collation,
generation, rewards, loss, backward, optimizer step. vt_core's call is its own step, packing included.
Breakdowns: vt_core's generation / scoring wait / training seconds; TRL's generation + scoring seconds
(``GRPOTrainer._generate_and_score_completions``, timed by a wrapper).
The profiler only sees allocations of its own thread, so TRL's peak memory comes from one more step
profiled inside the helper thread (same event integration as the harness).

``--optin`` (record ``trl_optin``): TRL stock vs TRL + Liger vs TRL + vt_core's opt-in, in bench/trl_optin.py.
"""

from __future__ import annotations

import argparse
import os
import sys

_THREADS = "1"
for _i, _a in enumerate(sys.argv):  # the thread count must be in the environment before torch is imported
    if _a == "--threads" and _i + 1 < len(sys.argv):
        _THREADS = sys.argv[_i + 1]
    elif _a.startswith("--threads="):
        _THREADS = _a.split("=", 1)[1]
os.environ["OMP_NUM_THREADS"] = _THREADS
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from harness import Record, bench_argparser, measure_many  # noqa: E402
from trl_common import BETAS, MAX_GRAD_NORM, summarize, trl_common_args  # noqa: E402
from trl_optin import run_optin  # noqa: E402
from trl_stepper import ThreadStepper  # noqa: E402

from vt_core import model as vt_model  # noqa: E402
from vt_core.data import load_tokenizer, tiny_model_config_path, tiny_tokenizer_path  # noqa: E402
from vt_core.eval import encode_prompt  # noqa: E402
from vt_core.rewards.scorer import RewardScorer  # noqa: E402
from vt_core.tasks import generate_tasks, load_tasks  # noqa: E402
from vt_core.tasks.code_problems import TRAIN_SEED  # noqa: E402
from vt_core.trainer.common import OptimConfig, RunConfig, TrainModelConfig  # noqa: E402
from vt_core.trainer.rl import RLAlgoConfig, RLConfig, RLDataConfig, RLGenConfig, RLTrainer  # noqa: E402
from vt_core.trainer.sft import SFTConfig, SFTDataConfig, SFTTrainer, load_sft_examples  # noqa: E402

KV_CACHE_TOKENS = 65536  # recipes/rl_code.py's embedded default


def make_model(folder: Path) -> None:
    """The tiny model, randomly initialised by vt_core (seed 0), saved with its tokenizer in HF format."""
    vt_model.from_config(tiny_model_config_path(), seed=0).save(folder)
    load_tokenizer(tiny_tokenizer_path()).save_pretrained(folder)


def hf_model(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")


def train_rows(n: int) -> list[dict]:
    """The first ``n`` rows of the embedded code tasks' train split (drawn like load_tasks("code", "train"),
    without generating all of its rows)."""
    return generate_tasks("code", n, TRAIN_SEED, exclude=load_tasks("code", "heldout"), split="train")


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def vt_sections(folder: Path, out: Path, lr: float, seed: int) -> dict:
    return dict(model=TrainModelConfig(path=str(folder), bf16=False),
                optim=OptimConfig(lr=lr, betas=BETAS, weight_decay=0.0, warmup_steps=0, min_lr_ratio=1.0,
                                   max_grad_norm=MAX_GRAD_NORM),
                run=RunConfig(out_dir=str(out), max_steps=10_000, seed=seed, device="cpu", progress=False))


# -- RL ---------------------------------------------------------------------------------------------
def rl_contenders(args, folder: Path, work: Path, steps_total: int):
    """(fns, per-step extras, shapes, cleanup, TRL steppers) of the RL comparison."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    pool = train_rows(args.prompts * steps_total)
    by_id = {r["id"]: r for r in pool}
    cfg = RLConfig(**vt_sections(folder, work / "vt_rl", args.rl_lr, args.seed),
                   data=RLDataConfig(path=str(write_jsonl(pool, work / "rl_pool.jsonl")), domain="code",
                               prompts_per_step=args.prompts, group_size=args.group),
                   gen=RLGenConfig(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=args.new_tokens,
                                  kv_cache_tokens=KV_CACHE_TOKENS, reward_workers=args.reward_workers),
                   algo=RLAlgoConfig(estimator="grpo", drop_zero_variance=False,
                                    share_prompts=args.share_prompts == "true"))
    vt = RLTrainer(cfg)
    vt_extra: list[dict] = []

    def vt_step() -> None:  # RLTrainer.fit's loop body, without metric logging
        roll = vt.rollout(vt.next_problem_indices())
        t0 = time.perf_counter()
        adv, keep, stats = vt.shaped_advantages(roll)
        metrics = vt.train_on(roll, adv, keep, stats)
        if metrics.get("skipped"):
            raise RuntimeError(f"vt_core RL step skipped its update: {metrics}")
        vt_extra.append({"gen_s": roll.gen_s, "score_s": roll.score_s, "train_s": time.perf_counter() - t0,
                         "response_len": stats["response_len"], "reward": stats["reward"]})

    trl_scorer = RewardScorer(max_workers=args.reward_workers)
    trl_extra: list[dict] = []

    def code_verifier(prompts, completions, id, **_):  # noqa: A002 (the dataset column's name)
        for row_id, completion in zip(id, completions):
            trl_scorer.submit(by_id[row_id], completion)
        results = list(trl_scorer.results().values())
        trl_extra.append({"sandbox_runs": sum(r.extra.get("sandbox_status") is not None for r in results),
                          "reward": statistics.mean(r.reward for r in results)})
        return [r.reward for r in results]

    tokenizer = load_tokenizer(folder)
    trl_ids = tokenizer(text=[r["prompt"] for r in pool])["input_ids"]  # how GRPOTrainer tokenizes text prompts
    if [list(ids) for ids in trl_ids] != [encode_prompt(tokenizer, r["prompt"]) for r in pool]:
        raise RuntimeError("TRL and vt_core tokenize the prompts differently: the comparison would not be fair")
    trl_args = GRPOConfig(**trl_common_args(work / "trl_rl", args.rl_lr, args.seed),
                          per_device_train_batch_size=args.prompts * args.group, num_generations=args.group,
                          max_completion_length=args.new_tokens, temperature=1.0, top_p=1.0, top_k=0,
                          beta=0.0, num_iterations=1, epsilon=0.2, loss_type="dapo", scale_rewards="group",
                          remove_unused_columns=False)
    trl = GRPOTrainer(model=hf_model(folder), reward_funcs=code_verifier, args=trl_args,
                      train_dataset=Dataset.from_list([{"prompt": r["prompt"], "id": r["id"]} for r in pool]),
                      processing_class=tokenizer)
    generate_and_score = trl._generate_and_score_completions

    def timed_generate_and_score(*a, **kw):  # times TRL's generation + scoring phase of the step
        t0 = time.perf_counter()
        out = generate_and_score(*a, **kw)
        trl_extra[-1]["gen_score_s"] = time.perf_counter() - t0  # the reward function appended this step's entry
        return out

    trl._generate_and_score_completions = timed_generate_and_score
    stepper = ThreadStepper(trl, args.threads)

    def cleanup() -> None:
        stepper.close()
        trl_scorer.shutdown()
        vt.scorer.shutdown()
        vt.close()

    shapes = {"prompts_per_step": args.prompts, "group_size": args.group, "max_new_tokens": args.new_tokens,
              "samples_per_step": args.prompts * args.group, "prompt_pool": len(pool),
              "prompt_tokens_mean": statistics.mean(map(len, trl_ids)), "lr": args.rl_lr,
              "reward_workers": args.reward_workers, "vt_share_prompts": args.share_prompts == "true",
              "trl_optim": str(trl_args.optim), "trl_checkpointing": bool(trl_args.gradient_checkpointing)}
    fns = {"vt_core": vt_step, "trl": stepper.step}
    return fns, {"vt_core": vt_extra, "trl": trl_extra}, shapes, cleanup, {"trl": stepper}


# -- SFT --------------------------------------------------------------------------------------------
def sft_contenders(args, folder: Path, work: Path, steps_total: int):
    """(fns, tokens per call, shapes, cleanup, TRL steppers) of the SFT comparison: TRL padding-free (the
    comparison asked for) and TRL with padded batches (its default collation, for reference)."""
    from datasets import Dataset
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer as TRLSFTTrainer

    rows = train_rows(args.sft_batch * steps_total)
    data = SFTDataConfig(path=str(write_jsonl(rows, work / "sft_pool.jsonl")), completion_field="solution",
                   examples_per_step=args.sft_batch, max_tokens=4096)
    vt = SFTTrainer(SFTConfig(**vt_sections(folder, work / "vt_sft", args.sft_lr, args.seed), data=data))
    tokens: dict[str, list[int]] = {"vt_core": []}

    def vt_step() -> None:
        metrics = vt.train_step(vt.next_examples())
        if metrics["skipped"]:
            raise RuntimeError(f"vt_core SFT step skipped its update: {metrics}")
        tokens["vt_core"].append(int(metrics["tokens"]))

    tokenizer = load_tokenizer(folder)
    examples = load_sft_examples(data, tokenizer)  # vt_core's tokenization, handed to TRL as is
    dataset = Dataset.from_list([{"input_ids": e.input_ids, "completion_mask": [int(m) for m in e.loss_mask]}
                                 for e in examples])
    steppers, trl_optim, trl_checkpointing = {}, None, None
    for name, padding_free in (("trl", True), ("trl_padded", False)):
        trl_args = TRLSFTConfig(**trl_common_args(work / name, args.sft_lr, args.seed),
                                per_device_train_batch_size=args.sft_batch, padding_free=padding_free, packing=False,
                                max_length=None, completion_only_loss=True, shuffle_dataset=True)
        trl = TRLSFTTrainer(model=hf_model(folder), args=trl_args, train_dataset=dataset, processing_class=tokenizer)
        trl.data_collator = counting_collator(trl.data_collator, tokens.setdefault(name, []))
        steppers[name] = ThreadStepper(trl, args.threads)
        trl_optim, trl_checkpointing = str(trl_args.optim), bool(trl_args.gradient_checkpointing)

    def cleanup() -> None:
        for stepper in steppers.values():
            stepper.close()
        vt.close()

    lengths = [len(e) for e in examples]
    shapes = {"examples_per_step": args.sft_batch, "examples": len(examples), "lr": args.sft_lr,
              "mean_example_tokens": statistics.mean(lengths), "max_example_tokens": max(lengths),
              "vt_core_max_tokens_per_micro_batch": data.max_tokens, "trl_optim": trl_optim,
              "trl_checkpointing": trl_checkpointing}
    fns = {"vt_core": vt_step, **{name: stepper.step for name, stepper in steppers.items()}}
    return fns, tokens, shapes, cleanup, steppers


def counting_collator(collate, counts: list[int]):
    """``collate`` that also appends each batch's token count to ``counts`` (batches are built in step order):
    padding-free, the one [1, T] row; padded, the tokens under the attention mask (padding not counted)."""
    def wrapped(batch):
        out = collate(batch)
        mask = out.get("attention_mask")
        counts.append(int(out["input_ids"].numel() if mask is None else mask.sum()))
        return out

    return wrapped


def parse_args() -> argparse.Namespace:
    parser = bench_argparser("trl")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of both contenders (default 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per contender (default 5; --quick: 1)")
    parser.add_argument("--prompts", type=int, default=None, help="RL prompts per step (default 8; --quick: 2)")
    parser.add_argument("--group", type=int, default=8, help="RL samples per prompt (default 8)")
    parser.add_argument("--new-tokens", type=int, default=None, help="RL max new tokens (default 16; --quick: 8)")
    parser.add_argument("--reward-workers", type=int, default=4, help="verifier threads of each contender")
    parser.add_argument("--sft-batch", type=int, default=None, help="SFT examples per step (default 32; --quick: 8)")
    parser.add_argument("--share-prompts", choices=("true", "false"), default="true",
                        help="vt_core's --algo.share_prompts (default true, as in the main job's embedded default)")
    parser.add_argument("--rl-lr", type=float, default=2e-4)
    parser.add_argument("--sft-lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", choices=("rl", "sft"), default=None, help="leave one comparison out")
    parser.add_argument("--optin", action="store_true",
                        help="instead: TRL stock / + Liger / + vt_core's opt-in on fixed batches (record trl_optin)")
    parser.add_argument("--optin-vocab", type=int, default=None,
                        help="--optin vocabulary (default 32768; --quick 2048)")
    parser.add_argument("--optin-batch", type=int, default=None, help="--optin batch (default 8; --quick 4)")
    parser.add_argument("--optin-completion", type=int, default=None,
                        help="--optin GRPO max completion tokens (default 256; --quick 16)")
    args = parser.parse_args()
    if args.device != "cpu":
        parser.error("bench_trl measures the CPU comparison only (--device cpu)")
    quick = args.quick
    args.steps = args.steps or (1 if quick else 5)
    args.prompts = args.prompts or (2 if quick else 8)
    args.new_tokens = args.new_tokens or (8 if quick else 16)
    args.sft_batch = args.sft_batch or (8 if quick else 32)
    args.optin_vocab = args.optin_vocab or (2048 if quick else 32768)
    args.optin_batch = args.optin_batch or (4 if quick else 8)
    args.optin_completion = args.optin_completion or (16 if quick else 256)
    return args


def timed_steps(fns: dict, steppers: dict[str, ThreadStepper], steps: int) -> tuple[dict, dict]:
    """The harness' figures of every contender (TRL's peak memory profiled in its own thread), then close the
    steppers; also returns the torch thread count each TRL loop ran with."""
    try:
        timed = measure_many(fns, device="cpu", warmup=1, repeats=steps)
        for name, stepper in steppers.items():
            timed[name]["peak_mem_mb"] = stepper.peak_memory_mb()
    finally:
        for stepper in steppers.values():
            stepper.close()
    return timed, {name: stepper.thread_num_threads for name, stepper in steppers.items()}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.optin:
        run_optin(args)
        return
    calls = 1 + args.steps + 2  # warm-up, timed steps, the harness' profiled step, TRL's in-thread profiled step
    timed_range = slice(1, 1 + args.steps)
    shapes: dict[str, object] = {"threads": {"OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"],
                                             "torch_main": torch.get_num_threads()},
                                 "steps_timed": args.steps, "warmup_steps": 1, "model": "embedded tiny Qwen2 "
                                 "(vt_core.data.tiny_model_config_path), random init seed 0, fp32",
                                 "trl_attention": "sdpa"}
    # each contender printed and the partial record written as it is added (harness.Record)
    results = Record("trl", args, shapes=shapes)
    with tempfile.TemporaryDirectory(prefix="bench_trl_") as tmp:
        work = Path(tmp)
        folder = work / "model"
        make_model(folder)
        if args.skip != "rl":
            results.running("rl: vt_core and TRL steps, interleaved")
            fns, extra, rl_shapes, cleanup, steppers = rl_contenders(args, folder, work, calls)
            try:
                timed, threads = timed_steps(fns, steppers, args.steps)
            finally:
                cleanup()
            shapes["rl"] = {**rl_shapes, "trl_thread_torch_threads": threads["trl"]}
            for name, figures in timed.items():
                results[f"rl_{name}"] = summarize(figures, 1.0, "steps")
                for key in extra[name][0]:
                    figures[f"{key}_median"] = statistics.median(x[key] for x in extra[name][timed_range])
            vt, trl = results["rl_vt_core"], results["rl_trl"]
            for unit in ("steps_per_s", "steps_per_cpu_s"):
                vt[f"{unit}_vs_trl"] = vt[unit] / trl[unit]
            results.write(partial=True)  # with the figures added after each contender was recorded
            print(f"RL  steps/s: vt_core {vt['steps_per_s']:.3f}  TRL {trl['steps_per_s']:.3f}  "
                  f"(x{vt['steps_per_s_vs_trl']:.2f}; per CPU second x{vt['steps_per_cpu_s_vs_trl']:.2f})", flush=True)
        if args.skip != "sft":
            results.running("sft: vt_core and TRL steps, interleaved")
            fns, tokens, sft_shapes, cleanup, steppers = sft_contenders(args, folder, work, calls)
            try:
                timed, threads = timed_steps(fns, steppers, args.steps)
            finally:
                cleanup()
            shapes["sft"] = {**sft_shapes, "trl_thread_torch_threads": threads}
            for name, figures in timed.items():
                figures["tokens_per_step_mean"] = statistics.mean(tokens[name][timed_range])
                results[f"sft_{name}"] = summarize(figures, figures["tokens_per_step_mean"], "tokens")
            vt = results["sft_vt_core"]
            for name in steppers:
                for unit in ("tokens_per_s", "tokens_per_cpu_s"):
                    vt[f"{unit}_vs_{name}"] = vt[unit] / results[f"sft_{name}"][unit]
            results.write(partial=True)
            print(f"SFT tokens/s: vt_core {vt['tokens_per_s']:.0f}  TRL padding-free "
                  f"{results['sft_trl']['tokens_per_s']:.0f} (x{vt['tokens_per_s_vs_trl']:.2f})  TRL padded "
                  f"{results['sft_trl_padded']['tokens_per_s']:.0f} (x{vt['tokens_per_s_vs_trl_padded']:.2f})",
                  flush=True)
    notes = ("rl_*: one RL step (generation + reward + loss + update); sft_*: one SFT optimizer step; sft_trl is "
             "TRL padding-free (the comparison asked for), sft_trl_padded TRL's padded batches (reference). "
             "*_vs_trl* = vt_core throughput / TRL throughput; *_per_cpu_s use the median process CPU time of a "
             "step instead of its wall time. TRL's figures come from a helper thread running "
             "its train() loop; cpu_time_median_ms is process CPU time (all threads); the sandboxed reward "
             "runs are child processes and count in wall time only. rl_vt_core gen_s includes the rewards "
             "scored during generation, score_s the wait after it, train_s advantages + loss + backward + update; "
             "rl_trl gen_score_s is GRPOTrainer._generate_and_score_completions (generation, rewards, "
             "advantages), the rest of its step is loss + backward + update + loop overhead. Random-init model: "
             "its completions almost never close the code fence, so the verifier mostly answers 'no code block "
             "found' (reward 0, no sandbox run; rl_trl sandbox_runs_median counts the runs per step); vt_core's "
             "zero-variance filtering is off so both train on every sample.")
    results.notes = notes
    path = results.finish()
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
