"""Rotary position embeddings for the Qwen2 / Llama families, matching transformers' formulas.

Inverse frequencies are computed once in fp32 on the CPU and kept out of the module's parameters and
buffers (so ``model.to(bfloat16)`` never rounds them); cos/sin are computed in fp32 per forward and cast
to the activation dtype, as transformers does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")


def rope_parameters(cfg: Mapping, max_position_embeddings: int, source: str = "config") -> dict:
    """Normalized RoPE parameters of a transformers config dict, old or new format.

    Old: ``rope_theta`` beside an optional ``rope_scaling`` dict (``type`` or ``rope_type``); new (transformers 5):
    one ``rope_parameters`` dict holding ``rope_type`` and ``rope_theta``. As in transformers, ``rope_scaling``
    wins over ``rope_parameters``, keys inside the dict win over top-level ones (except a top-level
    ``original_max_position_embeddings``), and llama3 / yarn default it to ``max_position_embeddings``.
    """
    params = dict(cfg.get("rope_scaling") or cfg.get("rope_parameters") or {})
    rope_type = params.pop("type", None)
    params.setdefault("rope_type", rope_type or "default")
    params.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
    if params["rope_type"] not in ROPE_TYPES:
        raise ValueError(f"{source}: unsupported rope_type {params['rope_type']!r}; supported: {', '.join(ROPE_TYPES)}")
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"{source}: partial_rotary_factor != 1 is not supported for {cfg.get('model_type')}")
    if params["rope_type"] in ("llama3", "yarn"):
        if cfg.get("original_max_position_embeddings") is not None:
            params["original_max_position_embeddings"] = cfg["original_max_position_embeddings"]
        params.setdefault("original_max_position_embeddings", max_position_embeddings)
    needed = {
        "linear": ("factor",),
        "dynamic": ("factor",),
        "llama3": ("factor", "low_freq_factor", "high_freq_factor"),
    }
    absent = [k for k in needed.get(params["rope_type"], ()) if params.get(k) is None]
    if absent:
        raise ValueError(f"{source}: rope_type {params['rope_type']!r} needs {', '.join(absent)}")
    return params


class Rotary:
    """RoPE tables for one config: fp32 inverse frequencies and the attention scaling of the rope type.

    Types: default, linear, dynamic (NTK, per document: a document longer than max_position_embeddings
    uses the base for its own length), yarn, llama3 -- the formulas transformers uses for these archs.
    """

    def __init__(self, rope: dict, head_dim: int, max_position_embeddings: int):
        self.p = rope
        self.dim = head_dim
        self.max_pos = max_position_embeddings
        with torch.device("cpu"):  # tables live on the CPU (also when the model is built on "meta")
            self.inv_freq, self.scaling = self._init()
        self._on_device: dict[torch.device, torch.Tensor] = {}

    def _exponents(self) -> torch.Tensor:
        return torch.arange(0, self.dim, 2, dtype=torch.int64).float() / self.dim

    def _init(self) -> tuple[torch.Tensor, float]:
        p, kind = self.p, self.p["rope_type"]
        base = p["rope_theta"]
        inv_freq = 1.0 / (base ** self._exponents())
        if kind == "linear":
            return inv_freq / p["factor"], 1.0
        if kind == "llama3":
            return self._llama3(inv_freq), 1.0
        if kind == "yarn":
            return self._yarn()
        return inv_freq, 1.0

    def _llama3(self, inv_freq: torch.Tensor) -> torch.Tensor:
        p = self.p
        factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
        old_len = p["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
        return torch.where(medium, smoothed, scaled)

    def _yarn(self) -> tuple[torch.Tensor, float]:
        p, dim = self.p, self.dim
        base, orig = p["rope_theta"], p["original_max_position_embeddings"]
        factor = p.get("factor") or self.max_pos / orig

        def mscale(scale: float, m: float = 1.0) -> float:
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        attn = p.get("attention_factor")
        if attn is None:
            m, m_all = p.get("mscale"), p.get("mscale_all_dim")
            attn = float(mscale(factor, m) / mscale(factor, m_all)) if m and m_all else mscale(factor)

        def correction_dim(rotations: float) -> float:
            return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

        lo, hi = correction_dim(p.get("beta_fast") or 32), correction_dim(p.get("beta_slow") or 1)
        if p.get("truncate", True):
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, dim - 1)
        if lo == hi:
            hi += 0.001
        ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - lo) / (hi - lo), 0, 1)
        pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
        extrapolation = 1 - ramp
        inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
        return inv_freq, attn

    def _dynamic(self, position_ids: torch.Tensor, cu_seqlens: torch.Tensor | None) -> torch.Tensor | None:
        """Per-token inverse frequencies [T, dim/2] when a document outgrows max_position_embeddings, else None."""
        if int(position_ids.max()) + 1 <= self.max_pos:
            return None
        T = position_ids.shape[0]
        if cu_seqlens is None:
            doc_len = (position_ids.max() + 1).expand(T)
        else:
            lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
            doc = torch.repeat_interleave(torch.arange(lengths.numel(), device=position_ids.device), lengths)
            doc_max = torch.zeros(lengths.numel(), dtype=torch.long, device=position_ids.device)
            doc_max = doc_max.scatter_reduce(0, doc, position_ids.long(), reduce="amax", include_self=False)
            doc_len = doc_max[doc] + 1
        max_pos = torch.tensor(self.max_pos, dtype=torch.long, device=position_ids.device)
        seq_len = torch.maximum(doc_len, max_pos)
        factor = self.p["factor"]
        base = self.p["rope_theta"] * ((factor * seq_len / self.max_pos) - (factor - 1)) ** (self.dim / (self.dim - 2))
        inv = 1.0 / (base[:, None] ** self._exponents().to(position_ids.device)[None, :])
        static = self._device_inv_freq(position_ids.device)
        return torch.where((doc_len > self.max_pos)[:, None], inv, static[None, :])

    def _device_inv_freq(self, device: torch.device) -> torch.Tensor:
        if device not in self._on_device:
            self._on_device[device] = self.inv_freq.to(device)
        return self._on_device[device]

    def cos_sin(
        self, position_ids: torch.Tensor, dtype: torch.dtype, cu_seqlens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, head_dim] in ``dtype`` (computed in fp32) for positions [T]."""
        inv = self._dynamic(position_ids, cu_seqlens) if self.p["rope_type"] == "dynamic" else None
        if inv is None:
            inv = self._device_inv_freq(position_ids.device)[None, :]
        freqs = position_ids[:, None].float() * inv
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.scaling).to(dtype), (emb.sin() * self.scaling).to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [T, heads, d] by cos/sin [T, d] (transformers' rotate-half convention)."""
    cos, sin = cos[:, None, :], sin[:, None, :]
    return x * cos + _rotate_half(x) * sin


__all__ = ["ROPE_TYPES", "Rotary", "apply_rope", "rope_parameters"]
