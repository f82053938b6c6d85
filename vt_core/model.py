"""Lean causal decoder for the Qwen2 / Qwen2.5 / Llama families, run on packed sequences.

The training forward takes a packed batch and returns the final-norm hidden states; the losses apply the
LM head themselves (``vt_core.kernels``), so logits are never built in training::

    model = vt_core.model.load("/ckpt/Qwen2.5-0.5B", dtype=torch.bfloat16, device="cuda")
    hidden = model(input_ids, position_ids, cu_seqlens)         # [T] [T] [B+1] -> [T, D]
    loss = linear_cross_entropy(hidden, model.lm_head_weight, targets)
    model.save("/ckpt/out")                                       # opens in transformers / vLLM unchanged

Parameter names equal transformers' (``model.layers.0.self_attn.q_proj.weight``, ``lm_head.weight``), so
state dicts move between the two as they are. Numerics follow transformers: RMSNorm in fp32 then cast back,
RoPE cos/sin computed in fp32 then cast to the activation dtype, softmax inside ``packed_attention``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vt_core.kernels import packed_attention
from vt_core.model_config import ACTIVATIONS, ARCHITECTURES, ModelConfig
from vt_core.model_io import (
    DEFAULT_MAX_SHARD_BYTES,
    assign_tensors,
    checkpoint_files,
    iter_tensors,
    read_config,
    resolve_dtype,
    save_checkpoint,
)
from vt_core.rope import Rotary, apply_rope

AttentionFn = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32, cast back to the input dtype, then scaled (as transformers does)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Attention(nn.Module):
    """GQA self-attention over a packed batch; RoPE applied to q and k before the attention call."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        D, d = config.hidden_size, config.head_dim
        self.layer_idx = layer_idx
        self.heads, self.kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, d
        self.scale = d**-0.5
        self.window = config.sliding_windows[layer_idx]
        self.q_proj = nn.Linear(D, self.heads * d, bias=config.qkv_bias)
        self.k_proj = nn.Linear(D, self.kv_heads * d, bias=config.qkv_bias)
        self.v_proj = nn.Linear(D, self.kv_heads * d, bias=config.qkv_bias)
        self.o_proj = nn.Linear(self.heads * d, D, bias=config.o_bias)

    def forward(self, x, cos, sin, cu_seqlens, max_seqlen, attention: AttentionFn | None):
        T = x.shape[0]
        q = apply_rope(self.q_proj(x).view(T, self.heads, self.head_dim), cos, sin)
        k = apply_rope(self.k_proj(x).view(T, self.kv_heads, self.head_dim), cos, sin)
        v = self.v_proj(x).view(T, self.kv_heads, self.head_dim)
        if attention is None:
            o = packed_attention(
                q, k, v, cu_seqlens, max_seqlen, causal=True, softmax_scale=self.scale, window=self.window
            )
        else:
            o = attention(self.layer_idx, q, k, v)
        return self.o_proj(o.reshape(T, self.heads * self.head_dim))


class MLP(nn.Module):
    """SwiGLU: down(act(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        D, inner, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(D, inner, bias=bias)
        self.up_proj = nn.Linear(D, inner, bias=bias)
        self.down_proj = nn.Linear(inner, D, bias=bias)
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.self_attn = Attention(config, layer_idx)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, cu_seqlens, max_seqlen, attention: AttentionFn | None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cu_seqlens, max_seqlen, attention)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """Embedding, decoder layers and final norm (transformers' ``model.*`` submodule)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class CausalLM(nn.Module):
    """A Qwen2 / Llama causal LM whose forward returns final-norm hidden states of a packed batch.

    Attributes: ``config`` (:class:`ModelConfig`), ``model`` (:class:`Decoder`), ``lm_head`` (``nn.Linear``,
    or None when tied), ``gradient_checkpointing`` (bool, default False: when True and grad is enabled,
    each decoder layer is recomputed in backward with non-reentrant ``torch.utils.checkpoint``),
    ``source_path`` (the folder it was loaded from, or None).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = None
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.rotary = Rotary(config.rope, config.head_dim, config.max_position_embeddings)
        self.gradient_checkpointing = False
        self.source_path: str | None = None

    @property
    def lm_head_weight(self) -> torch.Tensor:
        """The LM head [V, D]: the embedding matrix when tied."""
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        cu_seqlens: torch.Tensor | None,
        max_seqlen: int | None = None,
        attention: AttentionFn | None = None,
    ) -> torch.Tensor:
        """Hidden states after the final norm for a packed batch.

        input_ids [T] and position_ids [T] (integer; positions restart at 0 for each document),
        cu_seqlens [B+1] (int32 or int64; document boundaries, cu_seqlens[-1] == T), max_seqlen the longest
        document (computed from cu_seqlens when None). Returns hidden [T, D] in the parameter dtype.

        ``attention``: optional ``fn(layer_idx, q, k, v) -> o`` replacing ``vt_core.kernels.packed_attention``
        (e.g. the generation engine's paged-KV attention). q [T, H, d] and k, v [T, Hkv, d] arrive after RoPE;
        fn returns o [T, H, d] and is responsible for the causal structure and the 1/sqrt(d) softmax scale
        (``model.model.layers[i].self_attn.scale`` and ``.window``). With ``attention`` given, cu_seqlens may
        be None (it is then used only by dynamic RoPE, which treats the batch as one document).
        """
        if input_ids.dim() != 1 or position_ids.shape != input_ids.shape:
            raise ValueError(
                "input_ids and position_ids must both be [T]; "
                f"got {tuple(input_ids.shape)} and {tuple(position_ids.shape)}"
            )
        if cu_seqlens is None:
            if attention is None:
                raise ValueError("cu_seqlens is required unless an attention function is given")
        else:
            if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
                raise ValueError(f"cu_seqlens must be [B+1] with B >= 1, got shape {tuple(cu_seqlens.shape)}")
            if cu_seqlens.dtype != torch.int32:
                cu_seqlens = cu_seqlens.to(torch.int32)
            if attention is None and max_seqlen is None:
                bounds = cu_seqlens.tolist()
                if bounds[0] != 0 or bounds[-1] != input_ids.shape[0]:
                    raise ValueError(
                        f"cu_seqlens must run from 0 to T={input_ids.shape[0]}, got {bounds[0]}..{bounds[-1]}"
                    )
                max_seqlen = max(b - a for a, b in zip(bounds[:-1], bounds[1:]))
        x = self.model.embed_tokens(input_ids)
        cos, sin = self.rotary.cos_sin(position_ids, x.dtype, cu_seqlens)
        use_ckpt = self.gradient_checkpointing and torch.is_grad_enabled()
        for layer in self.model.layers:
            if use_ckpt:
                x = checkpoint(layer, x, cos, sin, cu_seqlens, max_seqlen, attention, use_reentrant=False)
            else:
                x = layer(x, cos, sin, cu_seqlens, max_seqlen, attention)
        return self.model.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Eval / generation helper: hidden [..., D] @ lm_head^T in the parameter dtype, returned as fp32 [..., V].

        Training never calls this: the fused losses take ``hidden`` and ``lm_head_weight`` directly.
        """
        return F.linear(hidden, self.lm_head_weight).float()

    def hf_config(self, dtype: torch.dtype | None = None) -> dict:
        """The config dict written by :meth:`save`: the loaded one with architectures, resolved sizes and
        ``torch_dtype`` (``dtype``, or the LM head's) set."""
        cfg = dict(self.config.hf_config)
        cfg["model_type"] = self.config.model_type
        cfg["architectures"] = [ARCHITECTURES[self.config.model_type]]
        c = self.config
        resolved = {
            "num_key_value_heads": c.num_key_value_heads,
            "head_dim": c.head_dim,
            "rms_norm_eps": c.rms_norm_eps,
            "max_position_embeddings": c.max_position_embeddings,
            "tie_word_embeddings": c.tie_word_embeddings,
            "hidden_act": c.hidden_act,
        }
        cfg.update(resolved)
        cfg["torch_dtype"] = str(dtype or self.lm_head_weight.dtype).removeprefix("torch.")
        cfg.pop("dtype", None)
        return cfg

    def save(
        self,
        path: str | os.PathLike,
        state_dict: Mapping[str, torch.Tensor] | None = None,
        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
        dtype: torch.dtype | str | None = None,
    ) -> list[str]:
        """Write a Hugging Face checkpoint folder: config.json + safetensors (sharded with an index above
        ``max_shard_bytes``), in ``dtype`` (e.g. "bfloat16" from fp32 master weights; default: as stored).
        The tied head is not written (transformers ties it on load). Tokenizer / generation-config files of
        the folder the model was loaded from are copied when absent. ``state_dict`` (e.g. full tensors
        gathered under FSDP2) replaces ``self.state_dict()``. Returns the weight file names.
        """
        tensors = dict(self.state_dict() if state_dict is None else state_dict)
        if self.config.tie_word_embeddings:
            tensors.pop("lm_head.weight", None)
        dtype = None if dtype is None else resolve_dtype(dtype)
        return save_checkpoint(
            path, self.hf_config(dtype), tensors, max_shard_bytes, companion_from=self.source_path, dtype=dtype
        )

    @torch.no_grad()
    def reset_parameters(self, seed: int | None = None) -> None:
        """Random init as transformers does: normal(0, initializer_range) weights, zero biases, unit norms."""
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.lm_head_weight.device).manual_seed(seed)
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, std, generator=gen)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)


def _empty_model(config: ModelConfig, dtype: torch.dtype | str | None, device) -> CausalLM:
    with torch.device("meta"):
        model = CausalLM(config)
    return model.to(resolve_dtype(dtype)).to_empty(device=device or "cpu")


def _parse(config: ModelConfig | Mapping | str | os.PathLike) -> tuple[ModelConfig, str | None]:
    if isinstance(config, ModelConfig):
        return config, None
    if isinstance(config, Mapping):
        return ModelConfig.from_hf(config), None
    cfg, folder = read_config(config)
    return ModelConfig.from_hf(cfg, source=os.fspath(config)), folder


def from_config(
    config: ModelConfig | Mapping | str | os.PathLike,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    seed: int | None = None,
) -> CausalLM:
    """A randomly initialised model from a config dict, a config.json path or a checkpoint folder's config.

    dtype defaults to float32, device to CPU; ``seed`` makes the init reproducible (the global RNG otherwise).
    """
    cfg, _ = _parse(config)
    model = _empty_model(cfg, dtype, device)
    model.reset_parameters(seed)
    return model


def load(
    path: str | os.PathLike, dtype: torch.dtype | str | None = None, device: torch.device | str | None = None
) -> CausalLM:
    """Load a causal LM from a local Hugging Face checkpoint folder (config.json + model.safetensors, or
    shards listed by model.safetensors.index.json).

    dtype (a torch dtype or its name, e.g. "bfloat16") defaults to float32 (the trainer's master weights),
    whatever the checkpoint's dtype; device to CPU.
    Tensors stream one at a time into an uninitialised model. Raises FileNotFoundError for a missing folder,
    config.json or weights file, ValueError for an unsupported model_type and for missing, unexpected or
    shape-mismatched tensors (naming the tensor and both shapes).
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        if os.path.exists(path):
            raise FileNotFoundError(f"model path {path!r} is not a folder (expected a Hugging Face checkpoint folder)")
        raise FileNotFoundError(f"model path {path!r} does not exist")
    raw, folder = read_config(path)
    cfg = ModelConfig.from_hf(raw, source=os.path.join(path, "config.json"))
    files = checkpoint_files(folder)
    model = _empty_model(cfg, dtype, device)
    ignore = {"lm_head.weight": "tied to the embedding"} if cfg.tie_word_embeddings else {}
    assign_tensors(model, iter_tensors(files), ignore=ignore, source=path)
    model.source_path = folder
    return model


__all__ = [
    "ARCHITECTURES",
    "AttentionFn",
    "CausalLM",
    "ModelConfig",
    "apply_rope",
    "from_config",
    "load",
]
