"""Generation throughput: vt_core's Engine against transformers' ``generate`` on the same weights and prompts.

    OMP_NUM_THREADS=1 python bench/bench_engine.py --device cpu     # tiny default model + ~50M Qwen2
    python bench/bench_engine.py --device cuda                      # Qwen2.5-1.5B-shaped, bf16
    python bench/bench_engine.py --quick                            # smoke test (small shapes)

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
after one short warm-up run, and the record is written with the shared harness' ``write_record``.
"""

from __future__ import annotations

import json
import random
import tempfile
import time

import torch
from harness import bench_argparser, write_record
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


def save_hf(config: dict, dtype, folder: str) -> None:
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(Qwen2Config(**config), dtype=torch.float32)
    hf.to(dtype).save_pretrained(folder)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def run_engine(model, prompts, new, n, device, cache_tokens, exact=False, compile_decode=False):
    engine = Engine(model, max_tokens_in_cache=cache_tokens, eos_token_id=[],
                    max_batch_size=max(256, n * len(prompts)), exact_logprobs=exact, compile_decode=compile_decode)
    params = [SamplingParams(temperature=1.0, max_new_tokens=m, ignore_eos=True, seed=i) for i, m in enumerate(new)]
    start = time.perf_counter()
    engine.generate(prompts[:2], [SamplingParams(temperature=1.0, max_new_tokens=4, seed=0)] * 2, n=n)  # warm-up
    warmup = time.perf_counter() - start
    sync(device)
    start = time.perf_counter()
    out = engine.generate(prompts, params, n=n)
    sync(device)
    seconds = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for group in out for c in group)
    assert tokens == n * sum(new), "the engine generated a different number of tokens than requested"
    res = {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
           "decode_steps": engine.stats["decode_steps"], "preemptions": engine.stats["preemptions"],
           "decode_attention": engine.decode_attention, "block_size": engine.block_size}
    if compile_decode:
        res["warmup_seconds_incl_compile"] = warmup
    if exact:
        res["rescore_seconds"] = engine.stats["rescore_seconds"]
        res["rescore_share"] = engine.stats["rescore_seconds"] / seconds
        res["rescore_max_abs_diff"] = engine.stats["rescore_max_abs_diff"]
    return res


def run_hf(hf, prompts, new, n, device, static=False):
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
    start = time.perf_counter()
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=max(new), **kwargs)
    sync(device)
    seconds = time.perf_counter() - start
    assert out.shape[1] == width + max(new)
    tokens = n * sum(new)
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
            "generated_incl_padding": out.shape[0] * max(new)}


def bench_one(label, config, dtype, device, prompts, new, n, with_static):
    with tempfile.TemporaryDirectory() as folder:
        save_hf(config, dtype, folder)
        model = vt_model.load(folder, dtype=dtype, device=device).eval()
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    cache_tokens = n * sum(len(p) + m for p, m in zip(prompts, new)) + 1024
    results = {f"{label}/vt_core_engine": run_engine(model, prompts, new, n, device, cache_tokens)}
    if device == "cpu":
        # compile_decode: the native decode step through torch.compile (its compilation is in the warm-up)
        results[f"{label}/vt_core_engine_compiled"] = run_engine(model, prompts, new, n, device, cache_tokens,
                                                                 compile_decode=True)
        # exact_logprobs=True: + the trainer-exact re-scoring pass (bitwise only on CPU fp32)
        results[f"{label}/vt_core_engine_exact_logprobs"] = run_engine(model, prompts, new, n, device, cache_tokens, True)
    with torch.no_grad():
        try:
            results[f"{label}/transformers_generate"] = run_hf(hf, prompts, new, n, device)
        except torch.OutOfMemoryError as exc:  # the padded batch may not fit where the paged cache does
            results[f"{label}/transformers_generate"] = {"error": repr(exc)[:500]}
            torch.cuda.empty_cache()
        if with_static:  # transformers compiles the forward itself when the cache is static
            try:
                results[f"{label}/transformers_generate_static_compile"] = run_hf(hf, prompts, new, n, device, True)
            except Exception as exc:  # recorded in the JSON, not hidden: "if it runs"
                results[f"{label}/transformers_generate_static_compile"] = {"error": repr(exc)[:500]}
    base = results[f"{label}/transformers_generate"].get("tokens_per_s")
    for res in results.values():
        if "tokens_per_s" in res and base:
            res["speedup_vs_transformers_generate"] = res["tokens_per_s"] / base
    for key, res in results.items():
        if "error" in res:
            print(f"{key:58s} failed: {res['error']}", flush=True)
        else:
            print(f"{key:58s} {res['tokens']:8d} tokens {res['seconds']:9.2f} s {res['tokens_per_s']:10.1f} tok/s "
                  f"x{res.get('speedup_vs_transformers_generate', float('nan')):.2f}", flush=True)
    return results


def main():
    parser = bench_argparser("engine")
    args = parser.parse_args()
    dev = args.device
    shapes, results = {}, {}
    if dev == "cpu":
        tiny = json.loads(tiny_model_config_path().read_text())
        tiny = {k: v for k, v in tiny.items() if k not in ("architectures", "torch_dtype", "model_type")}
        count = 8 if args.quick else 64
        plan = [("tiny", tiny, (16, 256), (16, 256)), ("qwen2_50m", QWEN_50M, (16, 256), (16, 256))]
        if args.quick:
            plan = [(name, cfg, (16, 64), (8, 32)) for name, cfg, _, _ in plan]
        for name, cfg, p_range, n_range in plan:
            prompts, new = workload(count, p_range, n_range, cfg["vocab_size"])
            shapes[name] = {"requests": count, "prompt_lens": p_range, "max_new_tokens": n_range, "n": 1,
                            "dtype": "float32", "config": cfg}
            results.update(bench_one(name, cfg, torch.float32, dev, prompts, new, 1, with_static=False))
    else:
        cfg = QWEN_1_5B
        plan = [("serve_256", 256, (100, 1024), (100, 1024), 1), ("rl_64x8", 64, (100, 1024), (100, 4096), 8)]
        if args.quick:
            plan = [("serve_256", 16, (16, 64), (16, 64), 1), ("rl_64x8", 4, (16, 64), (16, 128), 8)]
        for name, count, p_range, n_range, n in plan:
            prompts, new = workload(count, p_range, n_range, cfg["vocab_size"])
            shapes[name] = {"requests": count, "prompt_lens": p_range, "max_new_tokens": n_range, "n": n,
                            "dtype": "bfloat16", "config": cfg}
            results.update(bench_one(name, cfg, torch.bfloat16, dev, prompts, new, n, with_static=True))
    baseline = next(k for k in results if k.endswith("transformers_generate"))
    notes = ("tokens/s = tokens the requests asked for / wall seconds of one full run after a warm-up. "
             "transformers generate runs one left-padded batch with max_new_tokens = the largest request's, "
             "so it decodes every row for that many steps; only the requested tokens are counted. "
             "Sampling at temperature 1.0, no truncation, EOS ignored on both sides. vt_core_engine_exact_logprobs "
             "adds the re-scoring pass that makes the recorded logprobs equal the trainer's bitwise "
             "(rescore_seconds / rescore_share of its run; rescore_max_abs_diff = decode-path vs trainer logprobs). "
             "On CPU vt_core_engine is the default engine (decode_attention / block_size as recorded) and "
             "vt_core_engine_compiled adds compile_decode=True (torch.compile of the decode step; its compilation "
             "is in warmup_seconds_incl_compile, not in seconds). Ratios are against the "
             f"first workload's transformers run ({baseline}); compare within a workload.")
    if dev == "cpu":
        notes += f" CPU runs use torch threads = {torch.get_num_threads()} (OMP_NUM_THREADS)."
    path = write_record("engine", args, shapes=shapes, results=results, baseline=baseline, notes=notes)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
