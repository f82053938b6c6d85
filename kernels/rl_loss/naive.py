"""The readable oracle of the RL policy loss: the documented per-token formula as a Python loop over sequences and
tokens (float64 scalars), given the current logprobs and entropies; pair it with ``linear_logprobs_naive`` for the
oracle of ``linear_rl_loss``."""

from __future__ import annotations

import math

import torch


def rl_loss_naive(logp, ent, adv, mask, cu_seqlens, old, ref, rollout, c):
    """(loss, metrics) of ``rl_loss_from_logprobs`` from the documented per-token formula, one sequence and one
    token at a time: logp / ent [T] (differentiable), adv / mask / old / ref / rollout [T] (None where absent),
    cu_seqlens [B+1], c an ``RLLossConfig``."""
    cu = [int(x) for x in cu_seqlens]
    T = cu[-1]
    seq_losses, seq_counts, stats = [], [], {k: [] for k in ("low", "high", "ratio", "kl", "diff")}
    for i in range(len(cu) - 1):
        toks = [t for t in range(cu[i], cu[i + 1]) if mask[t]]
        base = {t: (old[t].double() if old is not None else logp[t].detach()) for t in toks}
        seq_lr = sum(logp[t].detach() - base[t] for t in toks) / max(len(toks), 1)
        seq_is = sum(base[t] - rollout[t].double() for t in toks) if rollout is not None else None
        losses = []
        for t in toks:
            a = float(adv[t])
            if c.ratio_level == "token":
                lr = logp[t] - base[t]
            else:
                lr = logp[t] - logp[t].detach() + seq_lr
            r = torch.exp(lr)
            pg = torch.maximum(-a * r, -a * r.clamp(1 - c.eps_low, 1 + c.eps_high))
            if c.dual_clip_c is not None and a < 0:
                pg = torch.minimum(pg, torch.tensor(-a * c.dual_clip_c, dtype=torch.float64))
            if c.tis_mode is not None:
                lw = float(base[t] - rollout[t].double()) if c.tis_mode == "token" else float(seq_is)
                w = math.exp(lw)
                w = min(w, c.tis_cap) if c.tis_action == "truncate" else (0.0 if w > c.tis_cap else w)
                pg = pg * w
            loss = pg
            if ref is not None:
                d = ref[t].double() - logp[t]
                kl = {"k1": -d, "k2": 0.5 * d * d, "k3": torch.exp(d) - d - 1}[c.kl_estimator]
                stats["kl"].append(float(kl))
                loss = loss + c.beta * kl
            loss = loss - c.entropy_coef * ent[t]
            losses.append(loss)
            stats["low"].append(float(r < 1 - c.eps_low and a < 0))
            stats["high"].append(float(r > 1 + c.eps_high and a > 0))
            stats["ratio"].append(float(r))
            if rollout is not None:
                stats["diff"].append(abs(float(logp[t]) - float(rollout[t])))
        if toks:
            seq_losses.append(sum(losses))
            seq_counts.append(len(toks))
    total, n_tok = sum(seq_losses), sum(seq_counts)
    if c.aggregation == "token_mean":
        loss = total / n_tok
    elif c.aggregation == "seq_mean_token_mean":
        loss = sum(s / n for s, n in zip(seq_losses, seq_counts)) / len(seq_losses)
    elif c.aggregation == "seq_mean_token_sum":
        loss = total / len(seq_losses)
    else:
        loss = total / c.max_tokens
    metrics = {
        "clip_frac_low": sum(stats["low"]) / n_tok,
        "clip_frac_high": sum(stats["high"]) / n_tok,
        "ratio_mean": sum(stats["ratio"]) / n_tok,
        "entropy_mean": float(sum(ent[t] for t in range(T) if mask[t])) / n_tok,
    }
    if ref is not None:
        metrics["kl_mean"] = sum(stats["kl"]) / n_tok
    if rollout is not None:
        metrics["sampler_logp_diff"] = sum(stats["diff"]) / n_tok
    return loss, metrics
