"""One RL step of vt_core's trainer, split into generation / scoring / training time, in tokens/s per device.

    python bench/bench_rl_step.py --device cuda                    # Qwen2.5-0.5B-shaped, bf16 (gpu_check.sh)
    python bench/bench_rl_step.py --device cuda --model 1.5b       # Qwen2.5-1.5B-shaped
    OMP_NUM_THREADS=1 python bench/bench_rl_step.py --device cpu   # the shipped tiny model (fp32 master weights)
    python bench/bench_rl_step.py --quick                          # smoke test: tiny shapes, one step

The model has random weights (initialised by ``vt_core.model.from_config``, seed 0, saved in Hugging Face
format and loaded by the trainer like any checkpoint) and the tiny tokenizer; prompts are the embedded code
tasks' train split (about 72 tokens each). A random model writes random tokens, so nearly every completion
runs to ``--new-tokens`` (EOS is one token of the vocabulary) and every reward is 0: dynamic filtering is off
(``algo.drop_zero_variance=False``) so the step still runs loss and backward over every sample, as a
learning run's step does over the kept ones.
One step = ``RLTrainer.fit``'s loop body without logging: rollout (in-process engine, rewards scored while
other samples still generate), group advantages, ``train_on`` (packed micro-batches, shared prompts as in
the main job, ``linear_rl_loss``, one optimizer step). One untimed step first (allocation, CUDA graphs), then
``--steps`` timed ones; each is synchronised at its end.

Figures per step (median over the timed steps): seconds of generation, of waiting for rewards after
generation, of training; ``tokens_per_s`` = (prompt + completion tokens of the step) / step seconds, per
device (one process); ``generated_tokens_per_s`` = completion tokens / generation seconds.

GPU shape (``--device cuda``, what gpu_check.sh runs): Qwen2.5-0.5B-shaped (24 layers, hidden 896, 14 q /
2 kv heads, vocabulary 151936), bf16 compute with fp32 master weights, 32 prompts x 8 samples x 512 new
tokens, one warm-up step and 2 timed steps: 39 s on the H200 of 2026-12-04 (steps of 5.75 s). Each step
is announced, and the record (partial until the last step) is rewritten after every timed step
(harness.Record).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict

import torch
from harness import Record, bench_argparser

import vt_core.model as vt_model
from vt_core.data import tiny_model_config_path, tiny_tokenizer_path
from vt_core.trainer.common import OptimConfig, RunConfig, TrainModelConfig
from vt_core.trainer.rl import RLAlgoConfig, RLConfig, RLDataConfig, RLGenConfig, RLTrainer

SHAPES = {
    "0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                 tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6),
    "1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                 tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6),
    # --quick: the full Qwen vocabulary on a small body, so the LM-head path is the real one
    "quick": dict(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                  tie_word_embeddings=True, rms_norm_eps=1e-6),
}


def model_config(name: str) -> dict:
    if name == "tiny":
        import json

        return json.loads(tiny_model_config_path().read_text())
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
            "bos_token_id": 0, "eos_token_id": 2, **SHAPES[name]}


def main() -> None:
    parser = bench_argparser("rl_step")
    parser.add_argument("--model", choices=("tiny", "0.5b", "1.5b"), default=None,
                        help="model shape (default: 0.5b on cuda, tiny on cpu)")
    parser.add_argument("--prompts", type=int, default=None, help="prompts per step (default 32; --quick 4)")
    parser.add_argument("--group", type=int, default=8, help="samples per prompt")
    parser.add_argument("--new-tokens", type=int, default=None,
                        help="tokens per completion (default 512 on cuda, 16 on cpu; --quick 8)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 2; --quick 1)")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device")
    name = "quick" if args.quick else (args.model or ("0.5b" if cuda else "tiny"))
    prompts = args.prompts or (4 if args.quick else 32)
    new_tokens = args.new_tokens or (8 if args.quick else (512 if cuda else 16))
    steps = args.steps or (1 if args.quick else 2)
    config = model_config(name)

    with tempfile.TemporaryDirectory() as folder:
        vt_model.from_config(config, seed=0).save(folder)
        cfg = RLConfig(
            model=TrainModelConfig(path=folder, tokenizer=str(tiny_tokenizer_path()), bf16=cuda),
            optim=OptimConfig(lr=1e-6, warmup_steps=0, min_lr_ratio=1.0, max_grad_norm=1.0),
            run=RunConfig(out_dir=f"{folder}/run", max_steps=10_000, seed=0, device=args.device, progress=False),
            data=RLDataConfig(domain="code", prompts_per_step=prompts, group_size=args.group),
            gen=RLGenConfig(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=new_tokens,
                           kv_cache_tokens=max(65536, 2 * prompts * args.group * (new_tokens + 128))),
            algo=RLAlgoConfig(estimator="grpo", drop_zero_variance=False, share_prompts=True),
        )
        trainer = RLTrainer(cfg)

        def step() -> dict:
            t0 = time.perf_counter()
            indices = trainer.next_problem_indices()
            roll = trainer.rollout(indices)
            t1 = time.perf_counter()
            metrics = trainer.train_on(roll, *trainer.shaped_advantages(roll))
            if cuda:
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            if metrics.get("skipped"):
                raise RuntimeError(f"the RL step skipped its update: {metrics}")
            completion = sum(len(c.token_ids) for g in roll.outputs for c in g)
            prompt = sum(len(trainer.prompt_ids(i)) for i in roll.indices) * args.group
            return {"step_s": t2 - t0, "gen_s": roll.gen_s, "score_s": roll.score_s, "train_s": t2 - t1,
                    "completion_tokens": completion, "prompt_tokens": prompt}

        shapes = {"model": name, "config": config, "prompts_per_step": prompts, "group_size": args.group,
                  "new_tokens": new_tokens, "dtype": "bf16 compute, fp32 master" if cuda else "fp32",
                  "rl_config": asdict(cfg)}
        results = Record("rl_step", args, shapes=shapes,
                         notes="random weights: completions run to new_tokens unless EOS is sampled; rewards are 0; "
                               "tokens/s per device")
        results.running("warm-up step")
        warm = step()
        print(f"{results.prefix} warm-up step {warm['step_s']:.2f} s", flush=True)
        timed = []
        for i in range(steps):
            results.running(f"timed step {i + 1} of {steps}")
            timed.append(step())
            results["vt_core_rl_step"] = figures(timed, cuda)
        trainer.scorer.shutdown()
        trainer.close()

    path = results.finish()
    r = results["vt_core_rl_step"]
    print(f"{name}: {r['tokens_per_s']:.0f} tokens/s per device, step {r['step_s']:.2f} s = generation "
          f"{r['gen_s']:.2f} + reward wait {r['score_s']:.2f} + training {r['train_s']:.2f}; wrote {path}")


def figures(timed: list[dict], cuda: bool) -> dict:
    """Medians over the timed steps so far, throughputs and shares."""
    med = {k: statistics.median(t[k] for t in timed) for k in timed[0]}
    tokens = med["completion_tokens"] + med["prompt_tokens"]
    return {
        **{k: round(v, 4) for k, v in med.items()},
        "tokens_per_s": tokens / med["step_s"],
        "generated_tokens_per_s": med["completion_tokens"] / med["gen_s"],
        "share": {k: round(med[k] / med["step_s"], 3) for k in ("gen_s", "score_s", "train_s")},
        "peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "steps": list(timed),
    }


if __name__ == "__main__":
    main()
