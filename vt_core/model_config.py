"""Architecture of a causal decoder (Qwen2 / Qwen2.5 / Llama), parsed from a Hugging Face ``config.json``.

:class:`ModelConfig` is what ``vt_core.model`` builds a model from; it normalises the families' spellings
(biases, RoPE scaling, sliding windows) and keeps the original dict to write back on save.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch.nn.functional as F

from vt_core.rope import rope_parameters

ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}
ACTIVATIONS = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


@dataclass
class ModelConfig:
    """Architecture of a decoder, parsed from a Hugging Face ``config.json`` dict (see :meth:`from_hf`)."""

    model_type: str
    """"qwen2" (Qwen2, Qwen2.5, Qwen2.5-Coder) or "llama"."""
    vocab_size: int
    hidden_size: int
    """Model width D."""
    intermediate_size: int
    """SwiGLU inner width."""
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    """GQA: query heads are a multiple of it."""
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    """True: the LM head is the embedding matrix (no ``lm_head.weight`` tensor)."""
    qkv_bias: bool
    """Bias on q/k/v projections (always for Qwen2; ``attention_bias`` for Llama)."""
    o_bias: bool
    """Bias on the output projection (Llama's ``attention_bias``; never for Qwen2)."""
    mlp_bias: bool
    hidden_act: str
    rope: dict
    """Normalized RoPE parameters: ``rope_type``, ``rope_theta`` and the type's own keys."""
    sliding_windows: list
    """Per layer: the sliding window in tokens, or None for full attention."""
    initializer_range: float = 0.02
    """Std of the normal init used by :func:`from_config`."""
    hf_config: dict = field(default_factory=dict, repr=False)
    """The original config dict, written back by ``save``."""

    @classmethod
    def from_hf(cls, cfg: Mapping, source: str = "config") -> ModelConfig:
        """Parse a transformers config dict (old ``rope_scaling``/``rope_theta`` or new ``rope_parameters``)."""
        model_type = cfg.get("model_type")
        if model_type not in ARCHITECTURES:
            raise ValueError(
                f"{source}: unsupported model_type {model_type!r}; supported: {', '.join(sorted(ARCHITECTURES))}"
            )
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        absent = [k for k in required if cfg.get(k) is None]
        if absent:
            raise ValueError(f"{source}: missing required field(s) {', '.join(absent)}")
        heads = int(cfg["num_attention_heads"])
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        if heads % kv_heads:
            raise ValueError(
                f"{source}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            )
        hidden = int(cfg["hidden_size"])
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        layers = int(cfg["num_hidden_layers"])
        act = cfg.get("hidden_act", "silu")
        if act not in ACTIVATIONS:
            raise ValueError(f"{source}: unsupported hidden_act {act!r}; supported: {', '.join(ACTIVATIONS)}")
        is_qwen = model_type == "qwen2"
        max_pos = int(cfg.get("max_position_embeddings") or (32768 if is_qwen else 2048))
        attention_bias = bool(cfg.get("attention_bias", False))
        return cls(
            model_type=model_type,
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=max_pos,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=True if is_qwen else attention_bias,
            o_bias=False if is_qwen else attention_bias,
            mlp_bias=False if is_qwen else bool(cfg.get("mlp_bias", False)),
            hidden_act=act,
            rope=rope_parameters(cfg, max_pos, source),
            sliding_windows=_sliding_windows(cfg, layers, is_qwen),
            initializer_range=float(cfg.get("initializer_range", 0.02)),
            hf_config=dict(cfg),
        )


def _sliding_windows(cfg: Mapping, layers: int, is_qwen: bool) -> list:
    if not is_qwen or not cfg.get("use_sliding_window") or cfg.get("sliding_window") is None:
        return [None] * layers
    window = int(cfg["sliding_window"])
    kinds = cfg.get("layer_types") or [
        "sliding_attention" if i >= cfg.get("max_window_layers", 28) else "full_attention" for i in range(layers)
    ]
    return [window if kind == "sliding_attention" else None for kind in kinds]


__all__ = ["ACTIVATIONS", "ARCHITECTURES", "ModelConfig"]
