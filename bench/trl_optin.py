"""TRL stock / + Liger / + vt_core on fixed batches: ``bench/bench_trl.py --optin``.

    OMP_NUM_THREADS=1 python bench/bench_trl.py --device cpu --optin --steps 3

``--optin`` (record ``trl_optin``) measures TRL's own trainers three ways on the same fixed batch: TRL 1.16
stock (its fused LM head), TRL with ``use_liger_kernel=True`` (recorded with its error where liger's Triton
kernels cannot run, e.g. on CPU), and TRL after ``vt_core.integrations.trl.enable``. A GRPO step here is what
the opt-in changes: the reference model's logprob pass (beta 0.04) plus loss + backward of one micro-batch
(``loss_type="dapo"``, clip-higher 0.28, ``use_bias_correction_kl=False``) of ``--optin-batch`` completions of
``--optin-completion`` tokens (lengths spread over the upper half) after 32 prompt tokens; generation and rewards
are left out (the same for all three). An SFT step is loss + backward of one padding-free batch of
``--optin-batch`` examples (64 to 256 tokens, loss on the last two thirds). The model is a small random Qwen2
(hidden 128, 2 layers, tied embeddings) with a ``--optin-vocab`` vocabulary so that the LM head weighs as in
real models; CPU fp32, one thread. Off Triton devices TRL's fused LM head scores every position in chunks of
32768 rows, so at these sizes its logits chunk is the whole [T, V]. The record name (``trl_optin``) keeps the main
comparison's record as it is.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from harness import Record, measure_many
from trl_common import summarize, trl_common_args

from vt_core.data import load_tokenizer, tiny_tokenizer_path

OPTIN = ("trl", "trl_liger", "trl_vt_core")


def optin_model(folder: Path, vocab: int) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=vocab, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, pad_token_id=0, bos_token_id=0, eos_token_id=2)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    load_tokenizer(tiny_tokenizer_path()).save_pretrained(folder)


def optin_trainers(make, errors: dict) -> dict:
    """One trainer per contender (``make(name)``); a contender whose set-up or first call fails is recorded in
    ``errors`` instead (TRL + Liger where liger's Triton kernels cannot run)."""
    import vt_core.integrations.trl as vt_trl

    fns = {}
    for name in OPTIN:
        try:
            trainer, step = make(name)
            if name == "trl_liger":
                step = with_liger(trainer, step)
            if name == "trl_vt_core":
                vt_trl.enable(trainer)
            step()  # probe: the error of a contender that cannot run here goes into the record
            fns[name] = step
        except Exception as e:  # noqa: BLE001 - recorded with its reason, the other contenders still run
            errors[name] = f"{type(e).__name__}: {str(e)[:300]}"
    return fns


def with_liger(trainer, step):
    """Apply liger's kernels to the trainer's model as ``Trainer.train()`` does first with ``use_liger_kernel=True``.
    Liger also swaps functions and classes in transformers' Qwen2 module, which would reach the other contenders:
    those module globals are put back at once and swapped in only around this contender's calls."""
    import transformers.models.qwen2.modeling_qwen2 as qwen2
    from transformers.integrations.liger import apply_liger_kernel

    module = vars(qwen2)
    before = dict(module)
    try:
        apply_liger_kernel(trainer.model, trainer.args.liger_kernel_config)
    finally:
        patched = {k: v for k, v in module.items() if before.get(k) is not v}
        module.update(before)

    def liger_step() -> None:
        module.update(patched)
        try:
            step()
        finally:
            module.update(before)

    return liger_step


def optin_grpo(args, folder: Path, work: Path, errors: dict):
    """(fns, shapes): one GRPOTrainer per contender, the same weights and the same fixed batch."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    B, P, C = args.optin_batch, 32, args.optin_completion
    g = torch.Generator().manual_seed(args.seed)
    prompt_ids = torch.randint(3, args.optin_vocab, (B, P), generator=g)
    completion_ids = torch.randint(3, args.optin_vocab, (B, C), generator=g)
    lengths = torch.randint(C // 2, C + 1, (B,), generator=g)
    completion_mask = (torch.arange(C)[None] < lengths[:, None]).long()
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": torch.ones(B, P, dtype=torch.long),
              "completion_ids": completion_ids.masked_fill(completion_mask == 0, 0),
              "completion_mask": completion_mask, "advantages": torch.randn(B, generator=g),
              "num_items_in_batch": completion_mask.sum()}
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    mask = torch.cat([inputs["prompt_mask"], completion_mask], 1)

    def make(name):
        cfg = GRPOConfig(**trl_common_args(work / f"optin_{name}", args.rl_lr, args.seed),
                         per_device_train_batch_size=B, num_generations=2, max_completion_length=C, beta=0.04,
                         use_bias_correction_kl=False, loss_type="dapo", epsilon_high=0.28,
                         use_liger_kernel=name == "trl_liger")
        trainer = GRPOTrainer(model=str(folder), reward_funcs=lambda completions, **_: [0.0] * len(completions),
                              args=cfg, train_dataset=Dataset.from_list([{"prompt": "x"}] * B),
                              processing_class=load_tokenizer(folder))
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1

        def step() -> None:
            trainer.model.zero_grad(set_to_none=True)
            with torch.no_grad():
                ref, _, _ = trainer._get_per_token_logps_and_entropies(trainer.ref_model, ids, mask, C)
            with trainer.compute_loss_context_manager():
                loss = trainer.compute_loss(trainer.model, {**inputs, "ref_per_token_logps": ref})
            loss.backward()

        return trainer, step

    shapes = {"batch": B, "prompt_tokens": P, "max_completion_tokens": C,
              "completion_tokens": int(completion_mask.sum()), "loss_type": "dapo", "beta": 0.04}
    return optin_trainers(make, errors), shapes


def optin_sft(args, folder: Path, work: Path, errors: dict):
    """(fns, tokens per step, shapes): one padding-free SFTTrainer per contender, the same fixed batch."""
    from datasets import Dataset
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer as TRLSFTTrainer

    g = torch.Generator().manual_seed(args.seed + 1)
    rows = []
    for n in torch.randint(64, 257, (args.optin_batch,), generator=g).tolist():
        rows.append({"input_ids": torch.randint(3, args.optin_vocab, (n,), generator=g).tolist(),
                     "completion_mask": [0] * (n // 3) + [1] * (n - n // 3)})
    batch_box = {}

    def make(name):
        cfg = TRLSFTConfig(**trl_common_args(work / f"optin_sft_{name}", args.sft_lr, args.seed),
                           per_device_train_batch_size=len(rows), padding_free=True, packing=False, max_length=None,
                           completion_only_loss=True, use_liger_kernel=name == "trl_liger",
                           model_init_kwargs={"attn_implementation": "sdpa"})
        trainer = TRLSFTTrainer(model=str(folder), args=cfg, train_dataset=Dataset.from_list(rows),
                                processing_class=load_tokenizer(folder))
        trainer.model.train()
        examples = [trainer.train_dataset[i] for i in range(len(rows))]
        batch = batch_box.setdefault("batch", trainer.data_collator(examples))

        def step() -> None:
            trainer.model.zero_grad(set_to_none=True)
            with trainer.compute_loss_context_manager():
                loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=None)
            loss.backward()

        return trainer, step

    fns = optin_trainers(make, errors)
    tokens = int(batch_box["batch"]["input_ids"].numel())
    return fns, tokens, {"examples": len(rows), "tokens": tokens, "padding_free": True}


def run_optin(args) -> None:
    """The --optin comparison: GRPO and SFT steps of TRL stock, TRL + Liger and TRL + vt_core."""
    shapes = {"threads": {"OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"], "torch_main": torch.get_num_threads()},
              "steps_timed": args.steps, "warmup_steps": 1, "vocab": args.optin_vocab,
              "model": "random Qwen2, hidden 128, 2 layers, 4 heads (2 KV), tied embeddings, fp32"}
    results = Record("trl_optin", args, shapes=shapes)  # ratios per kind: *_vs_trl below
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench_trl_optin_") as tmp:
        work = Path(tmp)
        optin_model(work / "model", args.optin_vocab)
        results.running("grpo: TRL stock / + Liger / + vt_core, interleaved")
        grpo_errors: dict[str, str] = {}
        fns, shapes["grpo"] = optin_grpo(args, work / "model", work, grpo_errors)
        for name, figures in measure_many(fns, device="cpu", warmup=1, repeats=args.steps).items():
            results[f"grpo_{name}"] = summarize(figures, 1.0, "steps")
        results.running("sft: TRL stock / + Liger / + vt_core, interleaved")
        sft_errors: dict[str, str] = {}
        fns, tokens, shapes["sft"] = optin_sft(args, work / "model", work, sft_errors)
        for name, figures in measure_many(fns, device="cpu", warmup=1, repeats=args.steps).items():
            results[f"sft_{name}"] = summarize(figures, tokens, "tokens")
    errors.update({f"grpo_{k}": v for k, v in grpo_errors.items()})
    errors.update({f"sft_{k}": v for k, v in sft_errors.items()})
    shapes["not_run"] = errors
    for kind, unit in (("grpo", "steps_per_s"), ("sft", "tokens_per_s")):
        stock, ours = results.get(f"{kind}_trl"), results.get(f"{kind}_trl_vt_core")
        if stock and ours:
            ours[f"{unit}_vs_trl"] = ours[unit] / stock[unit]
            ours["peak_mem_vs_trl"] = ours["peak_mem_mb"] / stock["peak_mem_mb"]
            print(f"{kind}: TRL + vt_core {ours[unit]:.2f} {unit} vs TRL {stock[unit]:.2f} "
                  f"(x{ours[unit + '_vs_trl']:.2f}), peak memory x{ours['peak_mem_vs_trl']:.2f}", flush=True)
    results.notes = ("grpo_*: reference logprob pass + GRPO loss + backward of one fixed micro-batch (no generation, "
                     "no rewards, no optimizer step); sft_*: padding-free SFT loss + backward of one fixed batch. "
                     "trl = TRL's stock path (its fused LM head), trl_liger = use_liger_kernel=True, trl_vt_core = "
                     "vt_core.integrations.trl.enable(trainer). *_vs_trl = vt_core / TRL stock. shapes.not_run "
                     "gives the error of each contender that could not run here.")
    print(f"wrote {results.finish()}", flush=True)
