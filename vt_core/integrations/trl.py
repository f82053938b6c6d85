"""vt_core's fused kernels inside TRL's GRPOTrainer and SFTTrainer: one call after building the trainer.

    from vt_core.integrations.trl import enable
    trainer = GRPOTrainer(model=..., reward_funcs=..., args=GRPOConfig(...), train_dataset=...)
    enable(trainer)                                   # or SFTTrainer(...); disable(trainer) undoes it
    trainer.train()

GRPOTrainer:
- per-token logprobs and entropies (policy, old and reference passes) come from ``linear_logprobs`` on the
  hidden states of the base model and the LM head weight, no logits tensor;
- where TRL's configured loss is one ``linear_rl_loss`` computes, the loss comes from it (gradient taken in the
  forward): loss_type grpo -> seq_mean_token_mean (rescaled by the non-empty rows / B as TRL averages over every
  row), bnpo -> token_mean, dr_grpo -> constant with max_tokens = B x max_completion_length, dapo -> the masked
  sum over TRL's ``num_items_in_batch`` normaliser; epsilon / epsilon_high -> eps_low / eps_high;
  ``delta`` >= 1 + epsilon_high -> dual_clip_c (the same loss); beta > 0 -> k3 against the reference
  logprobs when ``use_bias_correction_kl=False``; importance_sampling_level token / sequence -> ratio_level;
  TRL's vLLM importance-sampling correction (token or sequence, truncate or mask, no lower bound) -> tis_mode
  with the sampler's logprobs.
SFTTrainer: the loss is ``linear_cross_entropy`` (sum over the shifted labels / TRL's token count); a
padding-free trainer's model runs ``attn_implementation="vt_packed"`` (vt_core.integrations.transformers).

Everything else stays on TRL's own path (its fused LM head, its loss) and is logged once per reason: other
loss types, ``use_bias_correction_kl=True`` with beta > 0 (TRL's default: the KL term is weighted by the
differentiable ratio), top_entropy_quantile < 1, the entropy bonus, off-policy masking, a lower IS bound, MoE
aux losses, logit soft-capping or scaling, an LM head with bias, VLM inputs; for SFT also dft, label smoothing,
``compute_loss_func``, sequence parallelism and ``return_outputs``. Under vt_core the GRPO metrics kl, entropy
and clip_ratio/{low,high,region}_mean are logged (token means; TRL's per-sequence clip_ratio/low_min and
high_max are not); SFT logs num_tokens, not entropy and mean_token_accuracy.

What this relies on in TRL (the methods and the model forward it wraps, the attributes it reads, the loss
normalisers it reproduces) is listed and checked in ``_trl_internals``: anything missing or changed makes
``enable`` raise :class:`TRLIntegrationError` naming the TRL version and the method.
"""

from __future__ import annotations

import contextlib
import logging
import math

import torch

from vt_core.kernels import RLLossConfig, linear_cross_entropy, linear_logprobs, linear_rl_loss

from ._trl_internals import (GRPO_PINS, SFT_PINS, TRLIntegrationError, has_head, install_head, is_trl_fused_forward,
                             pin, remove_head, trl_version)

logger = logging.getLogger(__name__)
_LOGGED: set[str] = set()

GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
# inputs of TRL's logprob pass that only a VLM (or a model with extra token types) passes
_MULTIMODAL = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes",
               "num_tiles", "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")


def _log_once(message: str) -> None:
    if message not in _LOGGED:
        _LOGGED.add(message)
        logger.warning("vt_core.integrations.trl: %s", message)


def _text_model(trainer, model):
    """The transformers model under accelerate / PEFT wrappers (the one TRL gave a fused LM head)."""
    model = trainer.accelerator.unwrap_model(model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _model_fallback(model) -> str | None:
    """Why vt_core cannot compute this model's LM head (None when it can)."""
    config = model.config
    text = config.get_text_config()
    if text is not config:
        return f"{type(model).__name__} is a vision-language model"
    if getattr(text, "final_logit_softcapping", None) is not None:
        return "final logit soft-capping"
    for name in ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"):
        if getattr(text, name, None) is not None:
            return f"scaled logits ({name})"
    head = model.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        return "an LM head with a bias" if head is not None else "no LM head"
    if not has_head(model):
        return "a model whose forward vt_core did not wrap"
    return None


@contextlib.contextmanager
def _head_precision(fp32: bool, device: torch.device):
    """TRL's ``cast_lm_head_to_fp32``: the head outside autocast, in fp32."""
    with torch.autocast(device.type, enabled=False) if fp32 else contextlib.nullcontext():
        yield


def _same_dtype(hidden: torch.Tensor, weight: torch.Tensor, fp32: bool):
    if fp32:
        return hidden.float(), weight.float()
    return hidden.to(weight.dtype), weight


class _Integration:
    """What ``enable`` installed on one trainer, and the counters the tests read (``calls``)."""

    def __init__(self, trainer, kind: str):
        self.trainer, self.kind = trainer, kind
        self.calls = {"logprobs": 0, "rl_loss": 0, "cross_entropy": 0, "trl_logprobs": 0, "trl_loss": 0}
        self.models = []
        self.attn_before = None

    # -- GRPO -------------------------------------------------------------------------------------------
    def logprobs(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False,
                 compute_aux_loss=False, **extra):
        t = self.trainer
        reason = _model_fallback(_text_model(t, model))
        if reason is None and compute_aux_loss:
            reason = "the MoE load-balancing loss"
        if reason is None and any(extra.get(k) is not None for k in _MULTIMODAL):
            reason = "multimodal inputs"
        if reason is not None:
            _log_once(f"GRPO logprobs stay on TRL's fused LM head: {reason}")
            self.calls["trl_logprobs"] += 1
            return type(t)._get_per_token_logps_and_entropies(t, model, input_ids, attention_mask, logits_to_keep,
                                                              batch_size, compute_entropy, compute_aux_loss, **extra)
        C, B = logits_to_keep, input_ids.size(0)
        fp32 = bool(t.args.cast_lm_head_to_fp32)
        logps, entropies = [], []
        for start in range(0, B, batch_size or B):
            ids, am = input_ids[start:start + (batch_size or B)], attention_mask[start:start + (batch_size or B)]
            keep = am[:, -C:].bool()
            targets = ids[:, -C:]

            def head(hidden, weight, keep=keep, targets=targets):
                with _head_precision(fp32, hidden.device):
                    h, w = _same_dtype(hidden[:, -C - 1:-1][keep], weight, fp32)
                    out = linear_logprobs(h, w, targets[keep], t.temperature, return_entropy=compute_entropy)
                lp, ent = out if compute_entropy else (out, None)
                return tuple(None if x is None else x.new_zeros(keep.shape).masked_scatter(keep, x) for x in (lp, ent))

            with t.accelerator.autocast():
                lp, ent = model(input_ids=ids, attention_mask=am, vt_head=head)
            logps.append(lp)
            entropies.append(ent)
        self.calls["logprobs"] += 1
        return torch.cat(logps), torch.cat(entropies) if compute_entropy else None, None

    def rl_config(self, inputs) -> tuple[RLLossConfig | None, str | None]:
        """The RLLossConfig equal to TRL's configured loss for these inputs, or (None, why not)."""
        t, a = self.trainer, self.trainer.args
        if t.loss_type not in GRPO_LOSS_TYPES:
            return None, f"loss_type={t.loss_type!r} (vt_core computes {', '.join(GRPO_LOSS_TYPES)})"
        if t.beta != 0 and a.use_bias_correction_kl:
            return None, ("beta > 0 with use_bias_correction_kl=True (the KL term weighted by the differentiable "
                          "ratio); set use_bias_correction_kl=False for vt_core's k3 KL")
        checks = ((t.top_entropy_quantile < 1.0, "top_entropy_quantile < 1"),
                  (t._entropy_bonus_enabled, "the entropy bonus (entropy_coef / adaptive entropy)"),
                  (t.off_policy_mask_threshold is not None, "off-policy sequence masking"),
                  (t.aux_loss_enabled, "the MoE load-balancing loss"),
                  (a.delta is not None and a.delta < 1 + t.epsilon_high, "delta < 1 + epsilon_high"),
                  (t.importance_sampling_level not in ("token", "sequence"),
                   f"importance_sampling_level={t.importance_sampling_level!r}"),
                  (any(inputs.get(k) is not None for k in _MULTIMODAL), "multimodal inputs"))
        for failed, why in checks:
            if failed:
                return None, why
        tis = {}
        if t.use_vllm and t.vllm_importance_sampling_correction:
            level, _, action = t.vllm_importance_sampling_mode.partition("_")
            if level not in ("token", "sequence") or action not in ("truncate", "mask"):
                return None, f"vllm_importance_sampling_mode={t.vllm_importance_sampling_mode!r}"
            if t.vllm_importance_sampling_clip_min is not None and t.vllm_importance_sampling_clip_min > 0:
                return None, "a lower importance-sampling bound (vllm_importance_sampling_clip_min > 0)"
            if inputs.get("old_per_token_logps") is None or inputs.get("sampling_per_token_logps") is None:
                return None, "importance sampling without old and sampler logprobs in the batch"
            cap = t.vllm_importance_sampling_clip_max
            tis = dict(tis_mode=level, tis_action=action, tis_cap=math.inf if cap is None else cap)
        B = inputs["completion_ids"].size(0)
        aggregation, max_tokens = {"grpo": ("seq_mean_token_mean", None), "bnpo": ("token_mean", None),
                                   "dr_grpo": ("constant", B * t.max_completion_length),
                                   "dapo": ("constant", 1)}[t.loss_type]
        return RLLossConfig(eps_low=t.epsilon_low, eps_high=t.epsilon_high, dual_clip_c=a.delta, beta=t.beta,
                            kl_estimator="k3", ratio_level=t.importance_sampling_level, aggregation=aggregation,
                            max_tokens=max_tokens, temperature=t.temperature, **tis), None

    def rl_loss(self, model, inputs):
        t = self.trainer
        config, reason = self.rl_config(inputs)
        if reason is None:
            reason = _model_fallback(_text_model(t, model))
        if reason is not None:
            _log_once(f"GRPO loss stays on TRL's (logprobs from vt_core where they can be): {reason}")
            self.calls["trl_loss"] += 1
            return type(t)._compute_loss(t, model, inputs)
        completion_ids = inputs["completion_ids"]
        B, C = completion_ids.shape
        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        keep = mask.bool()
        lengths = keep.sum(1)
        cu = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
        adv = inputs["advantages"]
        adv = (adv[:, None].expand(B, C) if adv.dim() == 1 else adv)[keep]
        old = inputs.get("old_per_token_logps")
        old = None if old is None else old[keep]
        ref = inputs["ref_per_token_logps"][keep] if t.beta != 0 else None
        rollout = None
        if config.tis_mode is not None:  # TRL scores a token the sampler could not (NaN) with ratio 1
            rollout = inputs["sampling_per_token_logps"][keep]
            rollout = torch.where(torch.isnan(rollout), old, rollout)
        fp32 = bool(t.args.cast_lm_head_to_fp32)

        def head(hidden, weight):
            with _head_precision(fp32, hidden.device):
                h, w = _same_dtype(hidden[:, -C - 1:-1][keep], weight, fp32)
                return linear_rl_loss(h, w, completion_ids[keep], adv, torch.ones_like(adv), cu, old_logprobs=old,
                                      ref_logprobs=ref, rollout_logprobs=rollout, config=config)

        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        with t.accelerator.autocast():
            loss, metrics = model(input_ids=input_ids, attention_mask=attention_mask, vt_head=head)
        mode = "train" if t.model.training else "eval"
        accumulation = t.current_gradient_accumulation_steps if mode == "train" else 1.0
        if t.loss_type == "grpo":  # TRL averages over every row, vt_core over rows with a masked token
            loss = loss * ((lengths > 0).sum() / B)
        if t.loss_type == "dapo":
            normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / t.accelerator.num_processes
            if mode == "train":
                normalizer = normalizer * accumulation / t.args.steps_per_generation
            loss = loss / normalizer
        else:
            loss = loss / accumulation
        self.log_rl_metrics(mode, metrics, keep.sum().float())
        self.calls["rl_loss"] += 1
        return loss

    def log_rl_metrics(self, mode: str, metrics: dict, count: torch.Tensor) -> None:
        t = self.trainer

        def global_mean(x):
            totals = t.accelerator.reduce(torch.stack([x * count, count]), reduction="sum")
            return (totals[0] / totals[1].clamp(min=1.0)).item()

        if t.beta != 0:
            t._metrics[mode]["kl"].append(global_mean(metrics["kl_mean"]))
        t._metrics[mode]["entropy"].append(global_mean(metrics["entropy_mean"]))
        low, high = global_mean(metrics["clip_frac_low"]), global_mean(metrics["clip_frac_high"])
        t._metrics[mode]["clip_ratio/low_mean"].append(low)
        t._metrics[mode]["clip_ratio/high_mean"].append(high)
        t._metrics[mode]["clip_ratio/region_mean"].append(low + high)

    # -- SFT --------------------------------------------------------------------------------------------
    def sft_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        t, a = self.trainer, self.trainer.args
        sp = getattr(t.accelerator, "parallelism_config", None)
        checks = ((return_outputs, "return_outputs=True (the logits are asked for)"),
                  (a.loss_type != "nll", f"loss_type={a.loss_type!r}"),
                  (t.compute_loss_func is not None, "compute_loss_func"),
                  (t.label_smoother is not None, "label smoothing"),
                  (t.aux_loss_enabled, "the MoE load-balancing loss"),
                  (t._is_vlm or any(inputs.get(k) is not None for k in _MULTIMODAL), "a vision-language model"),
                  (sp is not None and getattr(sp, "sp_enabled", False), "sequence parallelism"),
                  ("shift_labels" in inputs, "pre-shifted labels"))
        reason = next((why for failed, why in checks if failed), None) or _model_fallback(_text_model(t, model))
        if reason is not None:
            _log_once(f"SFT loss stays on TRL's fused LM head: {reason}")
            self.calls["trl_loss"] += 1
            return type(t).compute_loss(t, model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if t.model.training else "eval"
        inputs["use_cache"] = False
        labels = inputs["labels"]

        def head(hidden, weight):
            targets = labels[:, 1:]
            keep = targets != -100
            h, w = _same_dtype(hidden[:, :-1][keep], weight, False)
            return linear_cross_entropy(h, w, targets[keep], reduction="sum"), keep.sum()

        with t.accelerator.autocast():
            loss_sum, n_valid = model(**{k: v for k, v in inputs.items() if k != "labels"}, vt_head=head)
        num_tokens = n_valid if num_items_in_batch is None else num_items_in_batch
        loss = loss_sum / torch.as_tensor(num_tokens).clamp(min=1)
        if a.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (t.accelerator.num_processes // t.get_tp_size())
        if mode == "train":  # TRL's token count, as its compute_loss keeps it
            if "attention_mask" in inputs:
                n = t.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            else:
                pos = inputs["position_ids"]
                n = t.accelerator.gather_for_metrics(torch.tensor(pos.size(1), device=pos.device)).sum().item()
            t._total_train_tokens += n // t._tp_size
        t._metrics[mode]["num_tokens"] = [t._total_train_tokens]
        self.calls["cross_entropy"] += 1
        return loss


def _is(trainer, name: str) -> bool:
    import trl

    return isinstance(trainer, getattr(trl, name))


def enable(trainer):
    """Make a TRL ``GRPOTrainer`` or ``SFTTrainer`` use vt_core's fused kernels (see the module docstring); call it
    after building the trainer, before ``train()``. Returns the trainer. Idempotent; ``disable`` undoes it."""
    if getattr(trainer, "_vt_core", None) is not None:
        return trainer
    if _is(trainer, "GRPOTrainer"):
        pin(trainer, GRPO_PINS)
        state = _Integration(trainer, "grpo")
        models = [_text_model(trainer, trainer.model)] + ([trainer.ref_model] if trainer.ref_model is not None else [])
        trainer._get_per_token_logps_and_entropies = state.logprobs
        trainer._compute_loss = state.rl_loss
    elif _is(trainer, "SFTTrainer"):
        pin(trainer, SFT_PINS)
        state = _Integration(trainer, "sft")
        models = [_text_model(trainer, trainer.model)]
        trainer.compute_loss = state.sft_loss
        if trainer.padding_free:
            from .transformers import register_packed_attention

            state.attn_before = models[0].config._attn_implementation
            models[0].set_attn_implementation(register_packed_attention())
    else:
        raise TypeError(f"vt_core.integrations.trl.enable: expected a TRL GRPOTrainer or SFTTrainer, got "
                        f"{type(trainer).__name__}")
    for model in models:
        if not is_trl_fused_forward(model):
            raise TRLIntegrationError(f"TRL {trl_version()}: {type(model).__name__}.forward is not TRL's fused LM "
                                      "head (trl.trainer.utils.add_fused_lm_head), which vt_core's opt-in wraps "
                                      "(written against TRL 1.16)")
        install_head(model)
    state.models = models
    trainer._vt_core = state
    return trainer


def disable(trainer):
    """Undo :func:`enable`: TRL's own methods, forward and attention implementation again. Returns the trainer."""
    state = getattr(trainer, "_vt_core", None)
    if state is None:
        return trainer
    for name in ("_get_per_token_logps_and_entropies", "_compute_loss", "compute_loss"):
        trainer.__dict__.pop(name, None)
    for model in state.models:
        remove_head(model)
    if state.attn_before is not None:
        state.models[0].set_attn_implementation(state.attn_before)
    trainer._vt_core = None
    return trainer


__all__ = ["GRPO_LOSS_TYPES", "TRLIntegrationError", "disable", "enable"]
