"""Fused GRPO-family policy loss on hidden states and the LM head, never building [T, V] logits.

``linear_rl_loss`` gets per-token logprobs and entropies at the sampling temperature from the fused op of
``linear_logprobs`` and applies the [T]-sized policy loss below, written as a sum of per-token terms
(the aggregation becomes a per-token weight that depends on the masks only). The same [T] math is public
as :func:`rl_loss_from_logprobs` for callers that already hold logprobs.

Gradients (``grad_mode``): when every term depends on its own token's logprob and entropy only, the loss
gradient is taken in the forward (``linear_token_loss``: each logits chunk becomes its gradient as soon as
its rows' terms are known; 6 T D V flops for forward + backward). Two options make a term depend on the
current logprobs of the whole sequence: the GSPO ratio with old_logprobs given, and the sequence TIS
weight without old_logprobs (with old_logprobs None the GSPO ratio is the token ratio). Those take the
recompute path: statistics first, the logits recomputed in the backward (8 T D V flops).

Per token t of sequence i (logp = current logprob, old = old_logprobs or logp.detach(), A = advantage):

    log r_t = logp_t - old_t                                          (ratio_level="token")
    log r_t = logp_t - sg(logp_t) + sg(mean_{u in i, masked} (logp_u - old_u))   (GSPO, "sequence")
    pg_t    = max(-A r_t, -A clip(r_t, 1 - eps_low, 1 + eps_high))
    pg_t    = min(pg_t, -A c)  where A < 0                            (dual clip, c = dual_clip_c)
    pg_t   *= w_t                                                     (truncated IS against the sampler)
    loss_t  = pg_t + beta * KL_t - entropy_coef * H_t

KL_t estimates KL(pi || ref) with d = ref_t - logp_t: k1 = -d, k2 = d^2 / 2, k3 = exp(d) - d - 1.
TIS: w = exp(base - rollout) per token ("token") or exp(sum over the sequence's masked tokens of
(base - rollout)) per sequence ("sequence"), base = old if given else sg(logp); then "truncate" takes
min(w, tis_cap) and "mask" sets w = 0 where w > tis_cap.

Aggregation over loss_mask (m): token_mean = sum(m loss) / sum(m); seq_mean_token_mean = mean over
sequences with at least one masked token of their token mean; seq_mean_token_sum = the same mean of
their token sums; constant = sum(m loss) / max_tokens (Dr.GRPO: set max_tokens to the number of
sequences in the global batch times the generation budget, a constant independent of lengths).

``naive.py`` holds the readable oracle (``rl_loss_naive``: the formula above as a loop over sequences and tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .._linear import check_linear_inputs, wants_fused_grad
from ..linear_logprobs import linear_token_loss, linear_token_stats
from .naive import rl_loss_naive

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "constant")


@dataclass
class RLLossConfig:
    """Options of :func:`linear_rl_loss`; the defaults are plain GRPO with token-mean aggregation."""

    eps_low: float = 0.2
    """Lower PPO clip: the ratio is clipped below at 1 - eps_low."""
    eps_high: float = 0.2
    """Upper PPO clip: the ratio is clipped above at 1 + eps_high (clip-higher: eps_high > eps_low)."""
    dual_clip_c: Optional[float] = None
    """Dual clip constant c > 1: for A < 0 the per-token loss is at most -A * c. None turns it off."""
    beta: float = 0.0
    """KL coefficient; > 0 needs ref_logprobs."""
    kl_estimator: str = "k3"
    """KL(pi || ref) estimator: "k1", "k2" or "k3" (Schulman's naming)."""
    entropy_coef: float = 0.0
    """Entropy bonus: loss -= entropy_coef * entropy of the full distribution at the temperature."""
    ratio_level: str = "token"
    """"token" (PPO/GRPO) or "sequence" (GSPO: length-normalised sequence ratio, stop-gradient token form)."""
    tis_mode: Optional[str] = None
    """Truncated importance sampling against the sampler's logprobs: None, "token" or "sequence"."""
    tis_cap: float = 2.0
    """Cap C of the TIS weight."""
    tis_action: str = "truncate"
    """"truncate" (w = min(w, C)) or "mask" (w = 0 where w > C)."""
    aggregation: str = "token_mean"
    """One of AGGREGATIONS: token_mean | seq_mean_token_mean | seq_mean_token_sum | constant."""
    max_tokens: Optional[int] = None
    """Denominator of the "constant" aggregation (Dr.GRPO); required there, ignored otherwise."""
    temperature: float = 1.0
    """Sampling temperature the logprobs are computed at (the rollout's)."""

    def __post_init__(self):
        if not (0 <= self.eps_low < 1 and self.eps_high >= 0):
            raise ValueError(
                f"RLLossConfig: need 0 <= eps_low < 1 and eps_high >= 0, got {self.eps_low}, {self.eps_high}"
            )
        if self.dual_clip_c is not None and not self.dual_clip_c > 1:
            raise ValueError(f"RLLossConfig: dual_clip_c must be > 1 or None, got {self.dual_clip_c}")
        if self.kl_estimator not in ("k1", "k2", "k3"):
            raise ValueError(f"RLLossConfig: kl_estimator must be k1, k2 or k3, got {self.kl_estimator!r}")
        if self.ratio_level not in ("token", "sequence"):
            raise ValueError(f"RLLossConfig: ratio_level must be token or sequence, got {self.ratio_level!r}")
        if self.tis_mode not in (None, "token", "sequence"):
            raise ValueError(f"RLLossConfig: tis_mode must be None, token or sequence, got {self.tis_mode!r}")
        if self.tis_action not in ("truncate", "mask"):
            raise ValueError(f"RLLossConfig: tis_action must be truncate or mask, got {self.tis_action!r}")
        if not self.tis_cap > 0:
            raise ValueError(f"RLLossConfig: tis_cap must be > 0, got {self.tis_cap}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"RLLossConfig: aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.aggregation == "constant" and not (self.max_tokens and self.max_tokens > 0):
            raise ValueError(f"RLLossConfig: aggregation='constant' needs max_tokens > 0, got {self.max_tokens}")
        if not self.temperature > 0:
            raise ValueError(f"RLLossConfig: temperature must be > 0, got {self.temperature}")
        if self.beta < 0 or self.entropy_coef < 0:
            raise ValueError(f"RLLossConfig: beta and entropy_coef must be >= 0, got {self.beta}, {self.entropy_coef}")


def _check_token_tensor(name: str, x: Optional[torch.Tensor], T: int) -> None:
    if x is not None and (x.dim() != 1 or x.shape[0] != T):
        raise ValueError(f"linear_rl_loss: {name} must be 1-D [T] with T = {T}, got shape {tuple(x.shape)}")


class _RLTerms:
    """The RL loss as a sum of per-token terms: what is fixed before the current logprobs are known (checked
    inputs, sequence ids, each token's aggregation weight), the sequence-level terms, and the terms of any
    token range.

    A token's term depends on its own logprob and entropy, except for two sequence-level quantities that
    depend on the current logprobs of the whole sequence: the GSPO ratio with old_logprobs given and the
    sequence TIS weight without old_logprobs (with old_logprobs None the GSPO ratio equals the token ratio).
    ``separable`` says neither is present; otherwise :meth:`sequence_terms` must see all logprobs first.
    """

    def __init__(self, T, device, advantages, loss_mask, cu_seqlens, old_logprobs, ref_logprobs,
                 rollout_logprobs, config: RLLossConfig):
        for name, x in (("advantages", advantages), ("loss_mask", loss_mask), ("old_logprobs", old_logprobs),
                        ("ref_logprobs", ref_logprobs), ("rollout_logprobs", rollout_logprobs)):
            _check_token_tensor(name, x, T)
        if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2 or int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != T:
            raise ValueError(f"linear_rl_loss: cu_seqlens must be [B+1] from 0 to T = {T}, got {cu_seqlens.tolist()}")
        if config.beta > 0 and ref_logprobs is None:
            raise ValueError("linear_rl_loss: config.beta > 0 needs ref_logprobs [T]")
        if config.tis_mode is not None and rollout_logprobs is None:
            raise ValueError("linear_rl_loss: config.tis_mode needs rollout_logprobs [T]")
        c = self.config = config
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(device=device, dtype=torch.int64)
        self.n_seq = lengths.shape[0]
        self.seq = torch.repeat_interleave(torch.arange(self.n_seq, device=device), lengths, output_size=T)
        self.mask = loss_mask.to(device=device) != 0
        self.m = self.mask.float()
        self.adv = torch.where(self.mask, advantages.to(device).float(), 0.0)
        self.old, self.ref, self.rollout = (None if x is None else x.to(device).float()
                                            for x in (old_logprobs, ref_logprobs, rollout_logprobs))
        n_tok = self.seq_sum(self.m)
        nonempty = (n_tok > 0).float().sum().clamp(min=1)
        if c.aggregation == "token_mean":
            self.agg = self.m / self.m.sum().clamp(min=1)
        elif c.aggregation == "seq_mean_token_mean":
            self.agg = self.m / (n_tok.clamp(min=1)[self.seq] * nonempty)
        elif c.aggregation == "seq_mean_token_sum":
            self.agg = self.m / nonempty
        else:
            self.agg = self.m / c.max_tokens
        self.seq_ratio = c.ratio_level == "sequence" and self.old is not None
        self.seq_tis = c.tis_mode == "sequence"
        self.separable = not (self.seq_ratio or (self.seq_tis and self.old is None))
        self.seq_log_ratio = self.seq_log_w = None
        if self.separable:
            self.sequence_terms(None)

    def seq_sum(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self.n_seq, device=x.device, dtype=x.dtype).index_add_(0, self.seq, x)

    def _masked_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Per token, the sum of x over its sequence's masked tokens."""
        return self.seq_sum(torch.where(self.mask, x, 0.0))[self.seq]

    def sequence_terms(self, logp_sg: Optional[torch.Tensor]) -> None:
        """The sequence-level terms ([T], per token); ``logp_sg`` (detached logprobs of all tokens) is needed
        only when the configuration is not separable."""
        base = self.old if self.old is not None else logp_sg
        if self.seq_ratio:
            self.seq_log_ratio = self._masked_sum(logp_sg - base) / self._masked_sum(self.m).clamp(min=1)
        if self.seq_tis:
            self.seq_log_w = self._masked_sum(base - self.rollout)

    def token_terms(self, logprobs: torch.Tensor, entropy: torch.Tensor, rows: slice):
        """(the rows' loss terms, already masked and weighted by the aggregation, and their per-token metrics)."""
        c = self.config
        mask, adv = self.mask[rows], self.adv[rows]
        logp_sg = logprobs.detach()

        def on_mask(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if x is None else torch.where(mask, x[rows], logp_sg)

        old, ref, rollout = on_mask(self.old), on_mask(self.ref), on_mask(self.rollout)
        base = logp_sg if old is None else old
        log_ratio = logprobs - base if not self.seq_ratio else logprobs - logp_sg + self.seq_log_ratio[rows]
        ratio = torch.exp(log_ratio)
        pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - c.eps_low, 1 + c.eps_high))
        metrics = {}
        if c.dual_clip_c is not None:
            metrics["dual_clip_frac"] = ((adv < 0) & (pg.detach() > -adv * c.dual_clip_c)).float()
            pg = torch.where(adv < 0, torch.minimum(pg, -adv * c.dual_clip_c), pg)
        if c.tis_mode is not None:
            log_w = base - rollout if not self.seq_tis else self.seq_log_w[rows]
            log_cap = math.log(c.tis_cap)
            if c.tis_action == "truncate":
                w = torch.exp(log_w.clamp(max=log_cap))
            else:
                w = torch.where(log_w > log_cap, 0.0, torch.exp(log_w.clamp(max=log_cap)))
            pg = pg * w
            metrics["tis_weight_mean"] = w
            metrics["tis_capped_frac"] = (log_w > log_cap).float()
        loss_tok = pg
        if ref is not None:
            d = ref - logprobs
            if c.kl_estimator == "k1":
                kl = -d
            else:
                kl = 0.5 * d.square() if c.kl_estimator == "k2" else torch.exp(d) - d - 1
            metrics["kl_mean"] = kl.detach()
            if c.beta > 0:
                loss_tok = loss_tok + c.beta * kl
        if c.entropy_coef > 0:
            loss_tok = loss_tok - c.entropy_coef * entropy
        loss_tok = torch.where(mask, loss_tok, 0.0) * self.agg[rows]
        r = ratio.detach()
        metrics["clip_frac_low"] = ((r < 1 - c.eps_low) & (adv < 0)).float()
        metrics["clip_frac_high"] = ((r > 1 + c.eps_high) & (adv > 0)).float()
        metrics["ratio_mean"] = r
        metrics["entropy_mean"] = entropy.detach().float()
        if rollout is not None:
            metrics["sampler_logp_diff"] = (logp_sg - rollout).abs()
        return loss_tok, metrics

    def loss_and_metrics(self, logprobs: torch.Tensor, entropy: torch.Tensor):
        """(loss, metrics) from the logprobs and entropies of all tokens (autograd through both)."""
        if not self.separable:
            self.sequence_terms(logprobs.detach())
        loss_tok, _ = self.token_terms(logprobs, entropy, slice(None))
        return loss_tok.sum(), self.metrics(logprobs, entropy)

    def metrics(self, logprobs: torch.Tensor, entropy: torch.Tensor) -> dict:
        """Each metric's mean over the masked tokens, from the detached logprobs / entropy of all tokens."""
        with torch.no_grad():
            _, per_token = self.token_terms(logprobs.detach(), entropy.detach(), slice(None))
            denom = self.m.sum().clamp(min=1)
            return {k: (v * self.m).sum() / denom for k, v in per_token.items()}


def rl_loss_from_logprobs(
    logprobs: torch.Tensor,
    entropy: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    cu_seqlens: torch.Tensor,
    old_logprobs: Optional[torch.Tensor] = None,
    ref_logprobs: Optional[torch.Tensor] = None,
    rollout_logprobs: Optional[torch.Tensor] = None,
    config: RLLossConfig = RLLossConfig(),
):
    """The [T]-sized policy loss of :func:`linear_rl_loss` given logprobs [T] and entropy [T] (fp32)."""
    T = logprobs.shape[0]
    _check_token_tensor("entropy", entropy, T)
    terms = _RLTerms(T, logprobs.device, advantages, loss_mask, cu_seqlens, old_logprobs, ref_logprobs,
                     rollout_logprobs, config)
    return terms.loss_and_metrics(logprobs, entropy)


def linear_rl_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    cu_seqlens: torch.Tensor,
    old_logprobs: Optional[torch.Tensor] = None,
    ref_logprobs: Optional[torch.Tensor] = None,
    rollout_logprobs: Optional[torch.Tensor] = None,
    config: RLLossConfig = RLLossConfig(),
    backend: Optional[str] = None,
    grad_mode: Optional[str] = None,
):
    """GRPO-family policy loss of packed sequences, fused with the LM head (no [T, V] logits).

    hidden: [T, D] final hidden states of the packed batch; weight: [V, D] LM head (same dtype/device);
    targets: [T] the sampled token at each position (any id in [0, V), or negative, where loss_mask is 0);
    advantages: [T] per-token advantages (``expand_to_tokens`` of per-sequence ones); loss_mask: [T] bool
    or 0/1, which tokens count (the completion); cu_seqlens: [B+1] sequence boundaries, 0 to T;
    old_logprobs / ref_logprobs / rollout_logprobs: optional [T] fp32 logprobs of the behaviour policy
    (None: on-policy, ratio = exp(logp - sg(logp))), the KL reference and the sampler (for TIS and the
    sampler-difference metric), all at ``config.temperature``.

    Returns (loss, metrics): loss a 0-d fp32 tensor differentiable w.r.t. hidden and weight; metrics a dict
    of detached 0-d fp32 tensors (call ``.item()`` when logging; no host sync happens here), each a mean
    over masked tokens: clip_frac_low, clip_frac_high, ratio_mean, entropy_mean, and when their inputs or
    options are present kl_mean (ref_logprobs), sampler_logp_diff = mean |logp - rollout_logp|
    (rollout_logprobs), tis_weight_mean and tis_capped_frac (tis_mode), dual_clip_frac (dual_clip_c).
    ``backend`` overrides ``VT_BACKEND`` ("torch" or "triton"). grad_mode: None (auto: gradient in the forward
    when gradients are needed and the configuration allows it), "fused" (ValueError where it does not) or
    "recompute"; both give the same loss and gradients up to fp32 rounding.
    """
    op = "linear_rl_loss"
    check_linear_inputs(op, hidden, weight, targets)
    terms = _RLTerms(hidden.shape[0], hidden.device, advantages, loss_mask, cu_seqlens, old_logprobs,
                     ref_logprobs, rollout_logprobs, config)
    fused = wants_fused_grad(op, grad_mode, hidden, weight)
    if grad_mode == "fused" and not terms.separable:
        raise ValueError(f"{op}: grad_mode='fused' needs per-token terms; this configuration has a sequence-level "
                         "term of the current logprobs (GSPO ratio with old_logprobs, or sequence TIS without them)")
    if fused and terms.separable:
        loss, stats = linear_token_loss(
            hidden, weight, targets,
            lambda st, rows: terms.token_terms(st.target_logit - st.lse, st.entropy, rows)[0],
            config.temperature, entropy=True, backend=backend, grad_mode="fused",
        )
        return loss, terms.metrics(stats.target_logit - stats.lse, stats.entropy)
    stats = linear_token_stats(hidden, weight, targets, config.temperature, entropy=True, backend=backend)
    return terms.loss_and_metrics(stats.target_logit - stats.lse, stats.entropy)


__all__ = ["AGGREGATIONS", "RLLossConfig", "linear_rl_loss", "rl_loss_from_logprobs", "rl_loss_naive"]
