"""The training core every stage shares: model + tokenizer loading, FSDP2, the optimizer step with
gradient accumulation and a NaN guard, checkpoints (save / exact resume) and metrics.

Loss scaling: each micro-batch's loss is computed with its own normaliser (tokens or sequences of that
micro-batch) and scaled by ``units_in_micro / units_in_global_batch`` (times the world size, since FSDP2
averages gradients over processes), so one optimizer step sees the loss of the whole global batch
whatever the split over micro-batches and processes.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from vt_core import model as vt_model
from vt_core.checkpoint import latest_checkpoint, rng_state, save_checkpoint, set_rng_state
from vt_core.config import format_config, save_config
from vt_core.data import check_vocab, load_tokenizer, tiny_model_config_path, tiny_tokenizer_path
from vt_core.generation import Engine
from vt_core.metrics import MetricsLogger
from vt_core.optim import MasterAdamW, lr_at
from vt_core.trainer.runtime import Runtime, full_state_dict, seed_everything, setup_runtime, shard_model

Domain = Literal["code", "math", "stem", "instruct"]
"""An embedded task domain (vt_core.tasks.DOMAINS)."""
Device = Literal["auto", "cpu", "cuda"]
"""Where a stage runs: "auto" is CUDA when a device is visible, else CPU."""

SAMPLE_SEED_STRIDE = 1_000_003
"""Sampling seeds of a phase: problem i in RL step s draws from ``derive_seed(run.seed, s * SAMPLE_SEED_STRIDE + i)``
(teacher t in distillation: ``t * SAMPLE_SEED_STRIDE + i``). A prime above any problem count, so no two
(phase, problem) pairs share a seed while there are fewer than 1,000,003 problems."""


@dataclass
class TrainModelConfig:
    """Which model to train."""

    path: str = ""
    """Local Hugging Face checkpoint folder. Empty: the embedded tiny Qwen2 config, randomly initialised."""
    tokenizer: str = ""
    """Tokenizer folder. Empty: the model folder's own, or the embedded tiny tokenizer."""
    init_seed: int = 0
    """Seed of the random init when ``path`` is empty."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer in backward (saves activation memory)."""
    bf16: bool = True
    """Compute in bf16 on GPU (fp32 master weights); CPU always runs fp32."""


@dataclass
class OptimConfig:
    """AdamW with warmup and cosine decay to a floor."""

    lr: float = 1e-5
    """Peak learning rate."""
    weight_decay: float = 0.0
    betas: tuple[float, ...] = (0.9, 0.95)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    """Floor of the cosine decay, as a fraction of the peak."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm (0 disables clipping)."""


@dataclass
class RunConfig:
    """Run length, outputs and checkpoints."""

    out_dir: str = "runs/run"
    """Metrics, plots, the resolved config and checkpoints go here."""
    seed: int = 0
    max_steps: int = 100
    """Optimizer steps (the LR schedule spans them)."""
    max_minutes: float = 0.0
    """Stop after this many minutes of training (0: no limit); checked between steps."""
    save_every: int = 0
    """Save a checkpoint every N steps (0: only at the end)."""
    keep_last: int = 2
    resume: bool = False
    """Continue from the newest checkpoint in out_dir/checkpoints when there is one."""
    device: Device = "auto"
    """auto (cuda when visible) | cpu | cuda."""
    progress: bool = True
    """Show a progress bar (rank 0)."""


def load_model_and_tokenizer(section: TrainModelConfig, rt: Runtime):
    """The causal LM (fp32 master weights, or bf16 on one GPU with fp32 masters in the optimizer) and its tokenizer."""
    if section.path:
        if not os.path.isfile(os.path.join(section.path, "config.json")):
            raise FileNotFoundError(f"--model.path {section.path!r} has no config.json "
                                    "(expected a Hugging Face checkpoint folder)")
        model = vt_model.load(section.path, device=rt.device)
    else:
        model = vt_model.from_config(tiny_model_config_path(), device=rt.device, seed=section.init_seed)
    tok_path = section.tokenizer or (section.path if section.path else str(tiny_tokenizer_path()))
    tokenizer = load_tokenizer(tok_path)
    check_vocab(tokenizer, model.config.vocab_size, model=section.path or "the embedded tiny model")
    model.gradient_checkpointing = section.gradient_checkpointing
    if not rt.distributed and rt.compute_dtype != torch.float32:
        model = model.to(rt.compute_dtype)
    return model, tokenizer


class TrainerCore:
    """State and mechanics common to SFT and RL (see the module docstring)."""

    def __init__(self, cfg, stage: str):
        self.cfg = cfg
        self.stage = stage
        self.rt = setup_runtime(cfg.run.device, cfg.model.bf16)
        seed_everything(cfg.run.seed + self.rt.rank)
        self.out = Path(cfg.run.out_dir)
        self.ckpt_dir = self.out / "checkpoints"
        model, self.tokenizer = load_model_and_tokenizer(cfg.model, self.rt)
        self.model = shard_model(model, self.rt)
        o = cfg.optim
        self.optimizer = MasterAdamW(self.model.parameters(), lr=o.lr, betas=tuple(o.betas),
                                     weight_decay=o.weight_decay)
        self.step = 0
        self.state: dict = {}
        self.skipped_steps = 0
        if self.rt.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out / "config.json")
            print(f"[{stage}] resolved config:\n{format_config(cfg)}", flush=True)
        if cfg.run.resume:
            self.resume()
        self.metrics = MetricsLogger(self.out, total_steps=cfg.run.max_steps, enabled=self.rt.is_main,
                                     progress=cfg.run.progress)
        self._t_start = time.perf_counter()

    # -- stepping -------------------------------------------------------------------------------
    def idle_passes(self, local: int, most: int, backward: bool = True) -> None:
        """Under FSDP2 every forward (and backward) is a collective, so a process with fewer micro-batches
        (``local``) than the busiest one (``most``, from ``rt.all_reduce_max``) runs the difference as passes
        over a one-token batch whose loss is 0 x (hidden + LM head): the same collectives, zero gradients."""
        dev = self.rt.device
        for _ in range(most - local):
            ids = torch.zeros(1, dtype=torch.long, device=dev)
            with torch.set_grad_enabled(backward):
                hidden = self.model(ids, ids, torch.tensor([0, 1], dtype=torch.int32, device=dev), 1)
                if backward:
                    ((hidden.sum() + self.model.lm_head_weight.sum()) * 0.0).backward()

    def backward(self, loss: torch.Tensor, weight: float) -> None:
        """Backward of one micro-batch's loss scaled by its share ``weight`` of the global batch."""
        (loss * (weight * self.rt.world_size)).backward()

    def lr(self) -> float:
        o = self.cfg.optim
        return lr_at(self.step, peak_lr=o.lr, total_steps=self.cfg.run.max_steps, warmup_steps=o.warmup_steps,
                     min_lr_ratio=o.min_lr_ratio)

    def optimizer_step(self, loss_value: float) -> dict:
        """Clip and apply the accumulated gradients, unless the loss or the gradients are not finite:
        then the step is skipped (gradients dropped, nothing applied) and logged as such."""
        finite = math.isfinite(loss_value)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if finite and grads:
            local = torch.stack([(g.to_local() if hasattr(g, "to_local") else g).float().abs().sum()
                                 for g in grads]).sum().item()
            finite = math.isfinite(local)
        finite = self.rt.all_reduce_sum([0.0 if finite else 1.0])[0] == 0.0
        if not finite:
            self.optimizer.zero_grad()
            self.skipped_steps += 1
            self.metrics.write(f"[{self.stage}] step {self.step}: non-finite loss or gradient, update skipped")
            return {"skipped": 1.0, "grad_norm": float("nan")}
        lr = self.lr()
        self.optimizer.set_lr(lr)
        norm = self.optimizer.step(self.cfg.optim.max_grad_norm or None)
        self.optimizer.zero_grad()
        self.step += 1
        return {"lr": lr, "grad_norm": norm, "skipped": 0.0}

    def out_of_time(self) -> bool:
        limit = self.cfg.run.max_minutes
        over = limit > 0 and (time.perf_counter() - self._t_start) > 60 * limit
        return bool(self.rt.broadcast_object(over))

    def done(self) -> bool:
        return self.step >= self.cfg.run.max_steps or self.out_of_time()

    # -- generation -----------------------------------------------------------------------------
    def generation_model(self, weights: dict[str, torch.Tensor] | None = None):
        """The model an Engine runs: the training model itself on one process; under FSDP2 an unsharded copy
        built from ``weights`` (a full state dict this rank already holds) or gathered onto every rank now
        (collective: every process must call it then)."""
        if not self.rt.distributed:
            return self.model
        full = weights if weights is not None else full_state_dict(self.model, self.rt, all_ranks=True)
        copy = vt_model.from_config(self.model.config.hf_config, dtype=self.rt.compute_dtype, device=self.rt.device)
        copy.load_state_dict({k: v.to(self.rt.device) for k, v in full.items()})
        return copy

    @contextmanager
    def generation_phase(self, kv_cache_tokens: int, weights: dict[str, torch.Tensor] | None = None,
                         exact_logprobs: bool = False):
        """An Engine over the current weights in eval mode; its KV cache is freed and the training mode
        restored when the phase ends."""
        model = self.generation_model(weights)
        was_training = model.training
        model.eval()
        engine = Engine(model, self.tokenizer, max_tokens_in_cache=kv_cache_tokens, exact_logprobs=exact_logprobs)
        try:
            yield engine
        finally:
            engine.free_cache()
            model.train(was_training)

    # -- checkpoints ----------------------------------------------------------------------------
    def _optimizer_state(self):
        if not self.rt.distributed:
            return self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(self.model, self.optimizer.inner,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def save(self) -> Path | None:
        """Write a checkpoint (collective: every rank calls it). Returns its folder on rank 0."""
        weights = full_state_dict(self.model, self.rt)
        optim = self._optimizer_state()
        rngs = self.rt.gather_objects(rng_state())
        path = None
        if self.rt.is_main:
            inner = self.model

            def write(d: Path) -> None:
                inner.save(d / "model", state_dict=weights)
                self.tokenizer.save_pretrained(d / "model")
                torch.save({"optimizer": optim, "rng": rngs}, d / "trainer_state.pt")
                (d / "state.json").write_text(json.dumps(
                    {"stage": self.stage, "step": self.step, "skipped_steps": self.skipped_steps, **self.state},
                    indent=2))

            path = save_checkpoint(self.ckpt_dir, self.step, write, keep_last=self.cfg.run.keep_last)
        self.rt.barrier()
        return path

    def resume(self) -> bool:
        """Load the newest checkpoint of out_dir (weights, optimizer, RNG, step and stage state)."""
        path = latest_checkpoint(self.ckpt_dir)
        if path is None:
            self.rt.print(f"[{self.stage}] --run.resume: no checkpoint under {self.ckpt_dir}, starting fresh")
            return False
        loaded = vt_model.load(path / "model")
        extra = torch.load(path / "trainer_state.pt", weights_only=False)
        meta = json.loads((path / "state.json").read_text())
        if self.rt.distributed:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
            set_model_state_dict(self.model, loaded.state_dict(), options=opts)
            set_optimizer_state_dict(self.model, self.optimizer.inner, extra["optimizer"], options=opts)
        else:
            with torch.no_grad():
                for name, p in self.model.state_dict().items():
                    p.copy_(loaded.state_dict()[name])
            self.optimizer.load_state_dict(extra["optimizer"])
        set_rng_state(extra["rng"][self.rt.rank])
        self.step = meta.pop("step")
        self.skipped_steps = meta.pop("skipped_steps", 0)
        meta.pop("stage", None)
        self.state = meta
        self.rt.print(f"[{self.stage}] resumed from {path} at step {self.step}")
        return True

    def final_model_dir(self) -> Path:
        return self.out / "final"

    def save_final(self) -> Path:
        """The trained model in Hugging Face format at out_dir/final (collective)."""
        weights = full_state_dict(self.model, self.rt)
        dest = self.final_model_dir()
        if self.rt.is_main:
            self.model.save(dest, state_dict=weights)
            self.tokenizer.save_pretrained(dest)
        self.rt.barrier()
        return dest

    def close(self) -> None:
        self.metrics.close()


__all__ = ["TrainModelConfig", "OptimConfig", "RunConfig", "TrainerCore", "load_model_and_tokenizer"]
