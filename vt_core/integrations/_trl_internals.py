"""What vt_core.integrations.trl relies on in TRL's internals (written against TRL 1.16), checked by ``pin``.

The opt-in wraps GRPOTrainer._get_per_token_logps_and_entropies and _compute_loss, SFTTrainer.compute_loss, and the
model forward TRL's ``add_fused_lm_head`` installs; it reads the trainer attributes and config fields listed here,
and its loss mapping reproduces TRL's normalisers quoted in ``*_SOURCE``. Any of them missing or changed raises
:class:`TRLIntegrationError` naming the TRL version and the method, instead of training with another loss.
"""

from __future__ import annotations

import functools
import inspect
import types


GRPO_PINS = dict(
    methods={"_get_per_token_logps_and_entropies": ("self", "model", "input_ids", "attention_mask", "logits_to_keep",
                                                  "batch_size", "compute_entropy", "compute_aux_loss"),
             "_compute_loss": ("self", "model", "inputs")},
    attrs=("loss_type", "beta", "epsilon_low", "epsilon_high", "temperature", "importance_sampling_level",
           "top_entropy_quantile", "use_vllm", "vllm_importance_sampling_correction", "vllm_importance_sampling_mode",
           "vllm_importance_sampling_clip_min", "vllm_importance_sampling_clip_max", "max_completion_length",
           "_entropy_bonus_enabled", "aux_loss_enabled", "off_policy_mask_threshold", "ref_model", "_metrics",
           "accelerator"),
    args=("delta", "use_bias_correction_kl", "steps_per_generation", "cast_lm_head_to_fp32"),
    # TRL's own normalisers and KL that the GRPO mapping reproduces: a change in any of them stops the opt-in
    source=("loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()",
            "loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)",
            "(per_token_loss.size(0) * self.max_completion_length)",
            'normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes',
            "normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation",
            'per_token_loss = per_token_loss * inputs["importance_sampling_ratio"]',
            "torch.exp(ref_per_token_logps - per_token_logps) - (ref_per_token_logps - per_token_logps) - 1"),
)
SFT_PINS = dict(
    methods={"compute_loss": ("self", "model", "inputs", "return_outputs", "num_items_in_batch")},
    attrs=("aux_loss_enabled", "compute_loss_func", "label_smoother", "padding_free", "_is_vlm", "_metrics",
           "_total_train_tokens", "_tp_size", "accelerator", "get_tp_size"),
    args=("loss_type", "average_tokens_across_devices"),
    source=("per_token_loss = -outputs.log_probs",
            "loss = per_token_loss.sum() / torch.as_tensor(num_tokens).clamp(min=1)"),
)


class TRLIntegrationError(RuntimeError):
    """TRL's internals are not the ones vt_core's opt-in was written against."""


def trl_version() -> str:
    import trl

    return trl.__version__


def pin(trainer, pins: dict) -> None:
    """Raise TRLIntegrationError unless ``trainer`` has what ``pins`` (GRPO_PINS or SFT_PINS) lists."""
    cls = type(trainer).__name__
    methods, attrs, args, source = pins["methods"], pins["attrs"], pins["args"], pins["source"]
    for name, params in methods.items():
        fn = getattr(type(trainer), name, None)
        if fn is None:
            raise TRLIntegrationError(f"TRL {trl_version()}: {cls}.{name} is missing; vt_core's opt-in wraps it "
                                      f"(written against TRL 1.16)")
        signature = inspect.signature(fn).parameters
        got = tuple(signature)
        required_extra = [p for p in list(signature.values())[len(params):]
                          if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if got[:len(params)] != params or required_extra:
            raise TRLIntegrationError(f"TRL {trl_version()}: {cls}.{name} has parameters {got}, vt_core's opt-in "
                                      f"expects {params} (written against TRL 1.16)")
    for name in attrs:
        if not hasattr(trainer, name):
            raise TRLIntegrationError(f"TRL {trl_version()}: {cls} has no attribute {name!r} that vt_core's opt-in "
                                      "reads (written against TRL 1.16)")
    for name in args:
        if not hasattr(trainer.args, name):
            raise TRLIntegrationError(f"TRL {trl_version()}: {cls}.args has no field {name!r} that vt_core's opt-in "
                                      "reads (written against TRL 1.16)")
    method = "_compute_loss" if "_compute_loss" in methods else "compute_loss"
    text = inspect.getsource(getattr(type(trainer), method))
    for line in source:
        if line not in text:
            raise TRLIntegrationError(f"TRL {trl_version()}: {cls}.{method} no longer contains {line!r}; vt_core's "
                                      "loss mapping reproduces it (written against TRL 1.16)")


def forward_chain(model):
    """The functions ``model.forward`` wraps, outermost first (accelerate's autocast wrappers, TRL's fused LM
    head, ours), following ``__wrapped__`` (functools.wraps)."""
    fn = getattr(model.forward, "__func__", model.forward)
    seen = set()
    while fn is not None and id(fn) not in seen:
        seen.add(id(fn))
        yield fn
        fn = getattr(fn, "__wrapped__", None)


def is_trl_fused_forward(model) -> bool:
    """Whether TRL's ``add_fused_lm_head`` forward (a ``fused_lm_head`` keyword) is in the model's forward chain."""
    for fn in forward_chain(model):
        code = getattr(fn, "__code__", None)
        if code is not None:
            keyword_only = code.co_varnames[code.co_argcount:code.co_argcount + code.co_kwonlyargcount]
            if "fused_lm_head" in keyword_only:
                return True
    return False


def has_head(model) -> bool:
    return any(getattr(fn, "_vt_core_head", False) for fn in forward_chain(model))


def install_head(model) -> None:
    """Wrap ``model.forward``: ``model(..., vt_head=fn)`` runs the base model and returns
    ``fn(last_hidden_state [B, S, D], lm_head weight [V, D])``; any other call goes to the forward it wraps."""
    if has_head(model):
        return
    previous = model.forward

    @functools.wraps(type(model).forward)  # generate() validates its kwargs against this signature
    def forward(self, *args, vt_head=None, **kwargs):
        if vt_head is None:
            return previous(*args, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        weight = self.get_output_embeddings().weight
        if hasattr(weight, "full_tensor"):  # FSDP2 shards parameters as DTensors
            weight = weight.full_tensor()
        return vt_head(hidden.to(weight.device), weight)

    model.forward = types.MethodType(forward, model)
    model.forward.__func__._vt_core_head = True
    model.forward.__func__._vt_core_previous = previous


def remove_head(model) -> None:
    if getattr(model.forward, "_vt_core_head", False):
        model.forward = model.forward.__func__._vt_core_previous
