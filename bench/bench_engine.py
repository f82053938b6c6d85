"""Generation throughput: vt_core's Engine against transformers' ``generate`` on the same weights and prompts.

    OMP_NUM_THREADS=1 python bench/bench_engine.py --device cpu     # tiny default model + ~50M Qwen2
    python bench/bench_engine.py --device cuda                      # Qwen2.5-1.5B-shaped, bf16
    python bench/bench_engine.py --quick                            # smoke test (small shapes)
    python bench/bench_engine.py --device cuda --static-compile     # + transformers' static cache + compile

Every workload draws, per request, a prompt length and a max_new_tokens (uniform in the stated ranges,
fixed seed). Both contenders sample at temperature 1.0 (no top-k/top-p), ignore EOS, and so generate
exactly the tokens each request asks for. The model is random-initialised, saved by transformers in
Hugging Face format, and loaded from that folder by both sides (same weights, same dtype).

transformers' ``generate`` takes one padded batch (left padding, an attention mask) and one
``max_new_tokens``: it gets the largest of the requests' values, so it decodes every row for that many
steps; its tokens/s counts only the tokens each request asked for (the same count as the engine's). That
is how transformers serves a batch of requests with different lengths in one call; the engine's
continuous batching lets short requests leave early, which is part of what is being measured.

Each contender is timed over one full run (wall clock, ``time.perf_counter``; on CUDA after a synchronize)
after a warm-up run: on CPU a short one (2 requests, 4 tokens); on CUDA the engine's warm-up is one
untimed full run of the same workload, so the timed run replays CUDA graphs already captured for every
batch-size bucket it uses and Triton kernels already compiled (the steady state an RL trainer's engine is
in from its second step on); ``warmup_seconds`` records that first run. Each contender is printed and the
partial JSON rewritten as soon as it is measured (harness.Record), and each phase is announced, so a run
cut short by a timeout still says where it was and what it measured.

GPU shape (``--device cuda``, what gpu_check.sh runs): a Qwen2.5-1.5B-shaped model (28 layers, hidden
1536, 12 q / 2 kv heads, d=128, vocabulary 151936), bf16, random weights initialised on the GPU;
``serve_64``: 64 requests, prompts 128..1024 tokens, outputs 64..512, n=1; ``rl_32x8``: 32 prompts of
64..256 tokens x 8 samples (the main job's rollout: 32 prompts x group 8, at most 512 new tokens),
outputs 64..512. 19,323 and 83,168 requested tokens; transformers decodes 64 and 256 padded rows for
504 and 507 steps. Expected on an H200: ~15 s of setup (weights made on the GPU, saved once, loaded by both sides),
the engine a few seconds per run, transformers ~10-20 s per workload: about 60-80 s in all.
transformers' ``generate`` is bounded by ``max_time`` from the time gpu_check leaves the step
(``VT_BENCH_DEADLINE``); a run it cuts short is marked ``truncated`` and its tokens/s is the projected
full run's (seconds x max_new_tokens / steps done). The static-cache + torch.compile contender of
transformers compiles for minutes at this size: only with ``--static-compile``. The first GPU run
(2026-12-04) had 256 requests with outputs up to 1024 and 64 x 8 samples with outputs up to 4096, a
static-compile contender and a CPU-side fp32 init of the 1.5B weights; it printed nothing, since every
line came after both workloads, and it did not finish in 200 s.
"""

from __future__ import annotations

import gc
import json
import random
import tempfile
import time

import torch
from harness import Record, bench_argparser, seconds_left
from transformers import AutoModelForCausalLM, Qwen2Config

import vt_core.model as vt_model
from vt_core.data import tiny_model_config_path
from vt_core.generation import Engine, SamplingParams

QWEN_50M = dict(vocab_size=32768, hidden_size=512, intermediate_size=1408, num_hidden_layers=12,
                num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True)
QWEN_1_5B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                 tie_word_embeddings=True, rope_theta=1000000.0)


def workload(num_prompts, prompt_range, new_range, vocab, n=1, seed=0):
    """(prompts, max_new_tokens per request), drawn uniformly with a fixed seed."""
    rng = random.Random(seed)
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(*prompt_range))] for _ in range(num_prompts)]
    new = [rng.randint(*new_range) for _ in range(num_prompts)]
    return prompts, new


def save_hf(config: dict, dtype, folder: str, device: str = "cpu") -> None:
    """Random weights saved in Hugging Face format. CPU: initialised in fp32, then cast (the committed CPU
    records); CUDA: initialised on the GPU in ``dtype`` (a 1.5B fp32 init on the host takes tens of seconds)."""
    torch.manual_seed(0)
    if device == "cpu":
        hf = AutoModelForCausalLM.from_config(Qwen2Config(**config), dtype=torch.float32)
        hf.to(dtype).save_pretrained(folder)
        return
    with torch.device(device):
        hf = AutoModelForCausalLM.from_config(Qwen2Config(**config), dtype=dtype)
    hf.save_pretrained(folder)
    del hf
    torch.cuda.empty_cache()


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def run_engine(model, prompts, new, n, device, cache_tokens, exact=False, compile_decode=False):
    engine = Engine(model, max_tokens_in_cache=cache_tokens, eos_token_id=[],
                    max_batch_size=max(256, n * len(prompts)), exact_logprobs=exact, compile_decode=compile_decode)
    params = [SamplingParams(temperature=1.0, max_new_tokens=m, ignore_eos=True, seed=i) for i, m in enumerate(new)]
    start = time.perf_counter()
    if device == "cuda":  # the full workload once: every bucket's CUDA graph captured, every kernel compiled
        engine.generate(prompts, params, n=n)
    else:
        engine.generate(prompts[:2], [SamplingParams(temperature=1.0, max_new_tokens=4, seed=0)] * 2, n=n)
    sync(device)
    warmup = time.perf_counter() - start
    before = dict(engine.stats)  # the counters add up over runs: report the timed run's own
    bucketed, captured = engine.bucketed, (engine.bucketed.captured if engine.bucketed is not None else 0)
    sync(device)
    start = time.perf_counter()
    out = engine.generate(prompts, params, n=n)
    sync(device)
    seconds = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for group in out for c in group)
    assert tokens == n * sum(new), "the engine generated a different number of tokens than requested"
    res = {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
           "decode_steps": engine.stats["decode_steps"] - before["decode_steps"],
           "preemptions": engine.stats["preemptions"] - before["preemptions"],
           "decode_attention": engine.decode_attention, "block_size": engine.block_size}
    if compile_decode:
        res["warmup_seconds_incl_compile"] = warmup
    if device == "cuda":
        res["warmup_seconds"] = warmup  # the first full run: graph captures and kernel compilation included
        res["cuda_graphs"] = engine.cuda_graphs
        res["graphs_captured_in_warmup"] = captured
        if engine.bucketed is not None:  # 0 when the warm-up captured every bucket the timed run used
            res["graphs_captured_in_timed_run"] = engine.bucketed.captured - (captured if engine.bucketed is bucketed
                                                                              else 0)
    if exact:
        res["rescore_seconds"] = engine.stats["rescore_seconds"] - before["rescore_seconds"]
        res["rescore_share"] = res["rescore_seconds"] / seconds
        res["rescore_max_abs_diff"] = engine.stats["rescore_max_abs_diff"]
    return res


def run_hf(hf, prompts, new, n, device, static=False, max_time=None):
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p)
        mask[r, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    kwargs = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, eos_token_id=None, pad_token_id=0,
                  num_return_sequences=n)
    if static:
        kwargs["cache_implementation"] = "static"
    hf.generate(ids[:2, -8:], attention_mask=mask[:2, -8:], max_new_tokens=4, **kwargs)  # warm-up
    sync(device)
    if max_time is not None:
        kwargs["max_time"] = max_time
    start = time.perf_counter()
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=max(new), **kwargs)
    sync(device)
    seconds = time.perf_counter() - start
    steps = out.shape[1] - width
    tokens = n * sum(new)
    res = {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
           "generated_incl_padding": out.shape[0] * max(new)}
    if steps < max(new):  # stopped by max_time: every row is decoded every step, so project the full run
        if max_time is None:
            raise RuntimeError(f"transformers generate stopped after {steps} of {max(new)} steps")
        res.update(truncated=True, steps_done=steps, steps_asked=max(new), measured_seconds=seconds,
                   measured_requested_tokens=n * sum(min(m, steps) for m in new), max_time=max_time)
        res["seconds"] = seconds * max(new) / max(steps, 1)
        res["tokens_per_s"] = tokens / res["seconds"]
    return res


def load_models(results, label, config, dtype, device):
    """(vt_core model, transformers model) with the same weights: saved once, loaded by both."""
    results.running(f"{label}: building the model")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        save_hf(config, dtype, folder, device)
        model = vt_model.load(folder, dtype=dtype, device=device).eval()
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    print(f"{results.prefix} {label}: model ready in {time.perf_counter() - t0:.1f} s", flush=True)
    return model, hf


def bench_one(results, label, model, hf, device, prompts, new, n, with_static, hf_runs_left):
    """Both contenders on one workload, each added to ``results`` (a harness Record) as it finishes."""
    cache_tokens = n * sum(len(p) + m for p, m in zip(prompts, new)) + 1024
    keys = []

    def contender(key, run):
        results.running(f"{label}/{key}")
        try:
            res = run()
        except Exception as exc:  # recorded in the JSON, not hidden; the other contenders still run
            res = {"error": repr(exc)[:500]}
            if device == "cuda":
                torch.cuda.empty_cache()
        keys.append(f"{label}/{key}")
        results[f"{label}/{key}"] = res

    contender("vt_core_engine", lambda: run_engine(model, prompts, new, n, device, cache_tokens))
    if device == "cpu":
        # compile_decode: the native decode step through torch.compile (its compilation is in the warm-up)
        contender("vt_core_engine_compiled", lambda: run_engine(model, prompts, new, n, device, cache_tokens,
                                                                compile_decode=True))
        # exact_logprobs=True: + the trainer-exact re-scoring pass (bitwise only on CPU fp32)
        contender("vt_core_engine_exact_logprobs", lambda: run_engine(model, prompts, new, n, device, cache_tokens,
                                                                      True))
    if device == "cuda":  # the engines (KV caches, CUDA graph pools) are gone: give their memory back
        gc.collect()
        torch.cuda.empty_cache()
    # transformers' generate is bounded on the GPU: its share of the time gpu_check leaves this step, after
    # ~30 s kept for each later workload's engine runs (none when no deadline is set: unbounded)
    left = seconds_left()
    max_time = None
    if device == "cuda" and left != float("inf"):
        max_time = max(5.0, (left - 10.0 - 30.0 * (hf_runs_left - 1)) / hf_runs_left)
    with torch.no_grad():
        contender("transformers_generate", lambda: run_hf(hf, prompts, new, n, device, max_time=max_time))
        if with_static:  # transformers compiles the forward itself when the cache is static
            contender("transformers_generate_static_compile", lambda: run_hf(hf, prompts, new, n, device, True))
    base = results[f"{label}/transformers_generate"].get("tokens_per_s")
    for key in keys:
        res = results[key]
        if "tokens_per_s" in res and base:
            res["speedup_vs_transformers_generate"] = res["tokens_per_s"] / base
    results.write(partial=True)
    for key in keys:
        res = results[key]
        if "speedup_vs_transformers_generate" in res:
            print(f"{results.prefix} {key}: x{res['speedup_vs_transformers_generate']:.2f} transformers_generate's "
                  "tokens/s", flush=True)


def main():
    parser = bench_argparser("engine")
    parser.add_argument("--static-compile", action="store_true",
                        help="also transformers' generate with a static cache (it torch.compiles the forward)")
    args = parser.parse_args()
    dev = args.device
    notes = ("tokens/s = tokens the requests asked for / wall seconds of one full run after a warm-up. "
             "transformers generate runs one left-padded batch with max_new_tokens = the largest request's, "
             "so it decodes every row for that many steps; only the requested tokens are counted. "
             "Sampling at temperature 1.0, no truncation, EOS ignored on both sides. vt_core_engine_exact_logprobs "
             "adds the re-scoring pass that makes the recorded logprobs equal the trainer's bitwise "
             "(rescore_seconds / rescore_share of its run; rescore_max_abs_diff = decode-path vs trainer logprobs). "
             "On CPU vt_core_engine is the default engine (decode_attention / block_size as recorded) and "
             "vt_core_engine_compiled adds compile_decode=True (torch.compile of the decode step; its compilation "
             "is in warmup_seconds_incl_compile, not in seconds). On CUDA the engine's warm-up is one untimed full "
             "run of the workload (warmup_seconds: CUDA-graph captures and Triton compilation), and transformers' "
             "generate is bounded by max_time (truncated: tokens/s projected to the full run). Compare within a "
             "workload (speedup_vs_transformers_generate); the ratios are against the first workload's "
             "transformers run.")
    if dev == "cpu":
        notes += f" CPU runs use torch threads = {torch.get_num_threads()} (OMP_NUM_THREADS)."
    shapes = {}
    if dev == "cpu":
        tiny = json.loads(tiny_model_config_path().read_text())
        tiny = {k: v for k, v in tiny.items() if k not in ("architectures", "torch_dtype", "model_type")}
        count = 8 if args.quick else 64
        plan = [("tiny", tiny, count, (16, 256), (16, 256), 1), ("qwen2_50m", QWEN_50M, count, (16, 256), (16, 256), 1)]
        if args.quick:
            plan = [(name, cfg, count, (16, 64), (8, 32), 1) for name, cfg, count, _, _, _ in plan]
        dtype = torch.float32
    else:
        # (label, config, requests, prompt lengths, output lengths, samples per request)
        plan = [("serve_64", QWEN_1_5B, 64, (128, 1024), (64, 512), 1),
                ("rl_32x8", QWEN_1_5B, 32, (64, 256), (64, 512), 8)]
        if args.quick:
            plan = [("serve_64", QWEN_1_5B, 16, (16, 64), (16, 64), 1),
                    ("rl_32x8", QWEN_1_5B, 4, (16, 64), (16, 128), 8)]
        dtype = torch.bfloat16
    baseline = f"{plan[0][0]}/transformers_generate"
    results = Record("engine", args, shapes=shapes, baseline=baseline, notes=notes)
    models: dict[int, tuple] = {}  # one model pair per config (the GPU workloads share the 1.5B one)
    for i, (name, cfg, count, p_range, n_range, n) in enumerate(plan):
        if id(cfg) not in models:
            models.clear()  # the previous config's models go before the next ones load
            models[id(cfg)] = load_models(results, name, cfg, dtype, dev)
        prompts, new = workload(count, p_range, n_range, cfg["vocab_size"])
        shapes[name] = {"requests": count, "prompt_lens": p_range, "max_new_tokens": n_range, "n": n,
                        "dtype": str(dtype).removeprefix("torch."), "config": cfg,
                        "requested_tokens": n * sum(new), "prompt_tokens": sum(map(len, prompts))}
        bench_one(results, name, *models[id(cfg)], dev, prompts, new, n, with_static=args.static_compile,
                  hf_runs_left=len(plan) - i)
    path = results.finish()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
