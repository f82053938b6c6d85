"""The RL stages (code, math, STEM): in-process generation -> verifier rewards -> group advantages
(GRPO family, MGPO weights) -> the fused ``linear_rl_loss`` -> one optimizer step per rollout batch.

A step takes ``data.prompts_per_step`` problems (global, seeded order), and every process generates
``data.group_size`` samples for its share (problem i goes to process i % world_size) with the current
weights (under FSDP2 the full parameters are gathered into an unsharded copy for the generation phase
and freed after). Rewards come from each problem's verifier, scored on a thread pool; shaping (overlong
penalty, Long2Short) is applied per group; advantages are computed over the gathered global batch, so
every process sees the same numbers; groups whose rewards are all equal are dropped before backward
when ``algo.drop_zero_variance``. The loss uses the sampler's logprobs as ``rollout_logprobs`` (for the
metric, or for truncated importance sampling when configured) and the ratio exp(logp - logp.detach())
on-policy; with ``algo.updates_per_batch > 1`` old logprobs are recomputed once and reused.
Before anything runs, every verifier the problems use is self-checked (vt_core.rewards.selfcheck); rewards
that are infrastructure failures are counted per step (``infra_error_frac``), never trained on, and stop
the run when they are more than half of a step or of a held-out evaluation (vt_core.rewards.infra).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from vt_core import model as vt_model
from vt_core.data import pack_rl, pack_rl_shared, shared_prompt_attention
from vt_core.eval import encode_prompt, evaluate, summarize
from vt_core.generation import Completion, SamplingParams, derive_seed
from vt_core.generation.exact import pad_for_invariance, per_document_attention
from vt_core.kernels import RLLossConfig, group_advantages, linear_logprobs, linear_rl_loss
from vt_core.rewards.base import is_correct
from vt_core.rewards.infra import check_infra, infra_record
from vt_core.rewards.scorer import RewardScorer
from vt_core.rewards.selfcheck import self_check, verifiers_of
from vt_core.rewards.shaping import apply_overlong_penalty, long2short
from vt_core.trainer.common import SAMPLE_SEED_STRIDE, TrainerCore
from vt_core.trainer.rl_config import RLAlgoConfig, RLConfig, RLDataConfig, RLEvalConfig, RLGenConfig

EPOCH_SEED_STRIDE = 7919
"""The problem order of epoch e is a permutation seeded with ``run.seed * EPOCH_SEED_STRIDE + e``: a prime, so
runs with different seeds see different orders in each of their first 7,919 epochs."""


@dataclass
class Rollout:
    """What :meth:`RLTrainer.rollout` returns: this process's share of a step's problems, each with its group of
    ``data.group_size`` samples; every list is indexed like ``indices`` (then by sample within the group)."""

    positions: list[int]
    """Position of each problem in the step's global problem list (the order advantages are computed in)."""
    indices: list[int]
    """Index of each problem in the trainer's problem set."""
    outputs: list[list[Completion]]
    """The sampled completions (token ids, sampler logprobs, finish reason)."""
    rewards: list[list[float]]
    """The verifier's reward of each completion (before shaping)."""
    infra: list[list[tuple[str, str] | None]]
    """None, or (cause, stderr) of an infrastructure failure (vt_core.rewards.infra.infra_record)."""
    gen_s: float
    """Wall time of generation (scoring overlaps it)."""
    score_s: float
    """Wall time spent waiting for the rewards after generation ended."""


def load_problems(path: str, domain: str, split: str) -> list[dict]:
    """Problems from a local JSONL (any source vt_core.data reads) or the embedded task set."""
    if path:
        from vt_core.data import iter_records

        return [r.data for r in iter_records(path, fields={"prompt": (str, list)})]
    from vt_core import tasks

    return tasks.load_tasks(domain, split)


class RLTrainer(TrainerCore):
    def __init__(self, cfg: RLConfig):
        if cfg.algo.share_prompts and cfg.gen.exact_logprobs:
            raise ValueError("--algo.share_prompts true and --gen.exact_logprobs true do not combine: exact mode "
                             "trains with the engine's unshared per-document forward; turn one of them off")
        super().__init__(cfg, "rl")
        self.problems = load_problems(cfg.data.path, cfg.data.domain, "train")
        if not self.problems:
            raise ValueError(f"RL data {cfg.data.path or cfg.data.domain}: no problems")
        self._prompt_cache: dict[int, list[int]] = {}
        self.heldout = load_problems(cfg.data.heldout_path, cfg.data.domain, "heldout")[: cfg.eval.problems]
        self.state.setdefault("epoch", 0)
        self.state.setdefault("index", 0)
        self.scorer = RewardScorer(max_workers=cfg.gen.reward_workers)
        checked = self_check(verifiers_of(self.problems + self.heldout), self.scorer)
        self.rt.print("verifier self-check passed (known-right 1, known-wrong 0): "
                      + (", ".join(f"{v} {s * 1000:.0f} ms" for v, s in checked.items()) or "no built-in verifier"))
        self.ref_model = None
        if cfg.loss.beta > 0:
            ref = vt_model.load(cfg.model.path, device=self.rt.device) if cfg.model.path else \
                vt_model.from_config(self.model.config.hf_config, device=self.rt.device, seed=cfg.model.init_seed)
            self.ref_model = ref.eval().requires_grad_(False)

    # -- data -----------------------------------------------------------------------------------
    def prompt_ids(self, i: int) -> list[int] | None:
        """Token ids of problem i's prompt (encoded on first use), or None when it exceeds max_prompt_tokens."""
        if i not in self._prompt_cache:
            self._prompt_cache[i] = encode_prompt(self.tokenizer, self.problems[i]["prompt"])
        ids = self._prompt_cache[i]
        return ids if len(ids) <= self.cfg.data.max_prompt_tokens else None

    def next_problem_indices(self) -> list[int]:
        """The next prompts_per_step problems in a seeded per-epoch order, skipping over-long prompts."""
        n, out = self.cfg.data.prompts_per_step, []
        scanned = 0
        while len(out) < n:
            g = torch.Generator().manual_seed(self.cfg.run.seed * EPOCH_SEED_STRIDE + self.state["epoch"])
            order = torch.randperm(len(self.problems), generator=g).tolist()
            while len(out) < n and self.state["index"] < len(order):
                i = order[self.state["index"]]
                self.state["index"] += 1
                scanned += 1
                if self.prompt_ids(i) is not None:
                    out.append(i)
            if self.state["index"] >= len(order):
                self.state["epoch"] += 1
                self.state["index"] = 0
            if scanned > len(order) and not out:
                raise ValueError(f"RL data: no prompt fits data.max_prompt_tokens={self.cfg.data.max_prompt_tokens}")
        return out

    # -- generation -----------------------------------------------------------------------------
    def sampling_params(self, seed: int, temperature: float | None = None) -> SamplingParams:
        g = self.cfg.gen
        return SamplingParams(temperature=g.temperature if temperature is None else temperature, top_p=g.top_p,
                              top_k=g.top_k, max_new_tokens=g.max_new_tokens, seed=seed)

    def rollout(self, indices: list[int]) -> Rollout:
        """Generate and score this process's share of ``indices`` (problem ``indices[pos]`` goes to process
        ``pos % world_size``)."""
        rt, n = self.rt, self.cfg.data.group_size
        mine = [(pos, i) for pos, i in enumerate(indices) if pos % rt.world_size == rt.rank]
        seeds = [derive_seed(self.cfg.run.seed, self.step * SAMPLE_SEED_STRIDE + i) for _, i in mine]
        futures, done = {}, {}

        def score_when_done(p: int, j: int, completion) -> None:  # rewards run while others still generate
            done.setdefault(p, {})[j] = completion.text
            if len(done[p]) == n:  # the whole group at once: the code verifier runs it in one sandbox launch
                texts = [done[p][k] for k in range(n)]
                for k, f in enumerate(self.scorer.submit_group(self.problems[mine[p][1]], texts)):
                    futures[p, k] = f

        t0 = time.perf_counter()
        with self.generation_phase(self.cfg.gen.kv_cache_tokens, exact_logprobs=self.cfg.gen.exact_logprobs) as engine:
            outs = engine.generate([self.prompt_ids(i) for _, i in mine], [self.sampling_params(s) for s in seeds],
                                   n=n, on_finish=score_when_done)
        gen_s = time.perf_counter() - t0
        results = [[futures[p, j].result() for j in range(n)] for p in range(len(mine))]
        return Rollout(positions=[pos for pos, _ in mine], indices=[i for _, i in mine], outputs=outs,
                       rewards=[[r.reward for r in row] for row in results],
                       infra=[[infra_record(r) for r in row] for row in results],
                       gen_s=gen_s, score_s=time.perf_counter() - t0 - gen_s)

    # -- training -------------------------------------------------------------------------------
    def shaped_advantages(self, roll: Rollout) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Global (all processes) shaping and advantages; returns this process's advantages, keep mask, stats.

        Infrastructure failures (rewards that are not facts about their completion) are counted as
        ``infra_error_frac``; a group holding one is not trained on, and a step where more than half the
        samples hit one raises InfrastructureFailure on every process (the same gathered numbers)."""
        rt, a, n = self.rt, self.cfg.algo, self.cfg.data.group_size
        local = {pos: (r, [len(c.token_ids) for c in g], [c.finish_reason for c in g], f)
                 for pos, r, g, f in zip(roll.positions, roll.rewards, roll.outputs, roll.infra)}
        for part in rt.gather_objects(local):
            local.update(part)
        order = sorted(local)
        failures = [f for pos in order for f in local[pos][3]]
        infra_frac = check_infra(failures, f"RL step {self.step}")
        rewards = torch.tensor([r for pos in order for r in local[pos][0]], dtype=torch.float32)
        lengths = torch.tensor([x for pos in order for x in local[pos][1]], dtype=torch.float32)
        raw = rewards.clone()
        if a.overlong_buffer:
            rewards = apply_overlong_penalty(rewards, lengths, self.cfg.gen.max_new_tokens, a.overlong_buffer,
                                             a.overlong_coef)
        if a.long2short_lambda:
            rewards = long2short(rewards, lengths.clamp(min=1), group_size=n, correct=is_correct(raw),
                                 lam=a.long2short_lambda)
        adv, _, zero_var = group_advantages(rewards, group_size=n, estimator=a.estimator, mgpo_lambda=a.mgpo_lambda,
                                            return_zero_variance=True)
        keep = ~zero_var if a.drop_zero_variance else torch.ones_like(zero_var)
        infra_group = torch.tensor([f is not None for f in failures]).view(-1, n).any(dim=1)
        keep &= ~infra_group.repeat_interleave(n)
        truncated = sum(fr == "length" for pos in order for fr in local[pos][2])
        stats = {"reward": float(rewards.mean()), "pass_rate": float(is_correct(raw).float().mean()),
                 "infra_error_frac": infra_frac,
                 "zero_variance_frac": float(zero_var.float().view(-1, n)[:, 0].mean()),
                 "truncation_ratio": truncated / len(raw), "response_len": float(lengths.mean())}
        rows = {pos: k for k, pos in enumerate(order)}
        sel = torch.tensor([rows[pos] * n + j for pos in roll.positions for j in range(n)], dtype=torch.long)
        global_kept = int(keep.sum())
        kept_tokens = int(lengths[keep].sum())
        return adv[sel], keep[sel], {**stats, "kept_samples": global_kept, "kept_tokens": kept_tokens}

    def train_on(self, roll: Rollout, adv: torch.Tensor, keep: torch.Tensor, stats: dict) -> dict:
        """The optimizer step(s) on one rollout batch: pack the kept samples, run the micro-batches
        (``algo.updates_per_batch`` times, one optimizer step each) and reduce the loss and metrics over
        processes. ``adv`` and ``keep`` are this process's, ``stats`` the global ones of shaped_advantages."""
        if stats["kept_samples"] == 0:
            return {"loss": 0.0, "skipped": 1.0}
        micro, logps, advs = self.pack_kept(roll, adv, keep)
        loss_cfg = self.loss_config(stats["kept_samples"])
        total_units = stats["kept_tokens"] if loss_cfg.aggregation == "token_mean" else stats["kept_samples"]
        updates = self.cfg.algo.updates_per_batch
        old, loss_total, metrics, result = None, 0.0, {}, {}
        most = self.rt.all_reduce_max(len(micro))  # FSDP2: every process runs as many passes (idle_passes)
        for _ in range(updates):
            if updates > 1 and old is None:
                with torch.no_grad():
                    old = [self._logprobs(self.model, mb) for mb in micro]
                self.idle_passes(len(micro), most, backward=False)
            loss_total, metrics = self.run_micro_batches(micro, logps, advs, old, loss_cfg, total_units)
            self.idle_passes(len(micro), most)
            loss_total, metrics = self.reduce_metrics(loss_total, metrics)
            result = self.optimizer_step(loss_total)
        return {"loss": loss_total, **metrics, **result}

    def pack_kept(self, roll: Rollout, adv: torch.Tensor, keep: torch.Tensor) -> tuple[list, list, list[float]]:
        """This process's kept samples that have completion tokens, packed into training micro-batches, with
        their sampler logprobs and advantages (in sample-id order, as the micro-batches scatter them)."""
        prompts, comps, logps, advs = [], [], [], []
        flat = [(i, c) for i, g in zip(roll.indices, roll.outputs) for c in g]
        for (i, c), a, k in zip(flat, adv.tolist(), keep.tolist()):
            if k and c.token_ids:
                prompts.append(self.prompt_ids(i))
                comps.append(c.token_ids)
                logps.append(torch.tensor(c.logprobs))
                advs.append(a)
        micro = self.pack(prompts, comps)
        if self.cfg.gen.exact_logprobs:  # per-token values scattered onto [T] keep their indices
            micro = [dataclasses.replace(mb, batch=pad_for_invariance(mb.batch)) for mb in micro]
        return micro, logps, advs

    def loss_config(self, kept_samples: int) -> RLLossConfig:
        """``cfg.loss``; the "constant" aggregation without max_tokens normalises by the step's largest
        possible token count (kept samples x max_new_tokens)."""
        loss_cfg = self.cfg.loss
        if loss_cfg.aggregation == "constant" and not loss_cfg.max_tokens:
            max_tokens = kept_samples * self.cfg.gen.max_new_tokens
            loss_cfg = RLLossConfig(**{**loss_cfg.__dict__, "max_tokens": max_tokens})
        return loss_cfg

    def run_micro_batches(self, micro: list, logps: list, advs: list[float], old: list | None,
                          loss_cfg: RLLossConfig, total_units: int) -> tuple[float, dict[str, float]]:
        """Forward, loss and backward of each micro-batch, scaled by its share of the global batch (tokens for
        token_mean, sequences otherwise, 1 for constant); returns this process's scaled loss and metric sums."""
        rt = self.rt
        loss_total, acc = 0.0, {}
        for m, mb in enumerate(micro):
            mb = mb.to(rt.device)
            b = mb.batch
            rollout = mb.scatter_tokens(logps).to(rt.device)
            adv_t = mb.scatter_samples(torch.tensor(advs)).to(rt.device)
            ref = self._logprobs(self.ref_model, mb) if self.ref_model is not None else None
            hidden = self._forward(self.model, mb)
            weight = self.model.lm_head_weight  # after forward: unsharded under FSDP2
            loss, met = linear_rl_loss(hidden, weight, b.targets, adv_t, b.loss_mask, b.cu_seqlens,
                                       old_logprobs=None if old is None else old[m], ref_logprobs=ref,
                                       rollout_logprobs=rollout, config=loss_cfg)
            units = int(b.loss_mask.sum()) if loss_cfg.aggregation == "token_mean" else len(mb.sample_ids)
            share = units / max(total_units, 1) if loss_cfg.aggregation != "constant" else 1.0
            self.backward(loss, share)
            loss_total += float(loss.detach()) * share
            for k, v in met.items():
                acc[k] = acc.get(k, 0.0) + float(v) * share
        return loss_total, acc

    def reduce_metrics(self, loss_total: float, acc: dict[str, float]) -> tuple[float, dict[str, float]]:
        """The loss and metric sums over every process (the union of names: a process that had no
        micro-batch has no metric names of its own)."""
        names = sorted(set().union(*self.rt.gather_objects(sorted(acc))))
        summed = self.rt.all_reduce_sum([loss_total] + [acc.get(k, 0.0) for k in names])
        return summed[0], dict(zip(names, summed[1:]))

    def pack(self, prompts: list[list[int]], comps: list[list[int]]) -> list:
        """Training micro-batches of the kept (prompt, completion) pairs: prompt-shared when share_prompts is on
        and every pair fits share_max_tokens, else one document per pair."""
        if not prompts:
            return []
        a = self.cfg.algo
        if a.share_prompts and max(len(p) + len(c) for p, c in zip(prompts, comps)) <= a.share_max_tokens:
            return pack_rl_shared(prompts, comps, a.micro_tokens, max_group_tokens=a.share_max_tokens)
        return pack_rl(prompts, comps, a.micro_tokens)

    def _forward(self, model, mb) -> torch.Tensor:
        """Hidden states of RL micro-batch ``mb``: in exact-logprob mode with the batch-invariant attention,
        with shared prompts with their tree attention."""
        b = mb.batch
        attention = None
        if mb.parents is not None:
            attention = shared_prompt_attention(model, mb)
        elif self.cfg.gen.exact_logprobs:
            attention = per_document_attention(model, b.cu_seqlens)
        return model(b.input_ids, b.position_ids, b.cu_seqlens, b.max_seqlen, attention=attention)

    @torch.no_grad()
    def _logprobs(self, model, mb) -> torch.Tensor:
        return linear_logprobs(self._forward(model, mb), model.lm_head_weight, mb.batch.targets.clamp(min=0))

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate_heldout(self, label: str) -> dict:
        """pass@1 (mean over samples), its standard error, pass@k and infra_error_frac on the held-out
        problems (all ranks evaluate a share; rank 0 prints); raises InfrastructureFailure on every rank when
        more than half the samples hit an infrastructure failure."""
        rt, e = self.rt, self.cfg.eval
        mine = [(i, p) for i, p in enumerate(self.heldout) if i % rt.world_size == rt.rank]
        params = self.sampling_params(0, temperature=e.temperature)
        with self.generation_phase(self.cfg.gen.kv_cache_tokens) as engine:
            res = evaluate(engine, self.tokenizer, [p for _, p in mine], k=e.samples, params=params,
                           ks=(1, e.samples), scorer=self.scorer, seed=10_000 + rt.rank, max_infra_frac=None)
        rows = {i: ([is_correct(r) for r in row], f) for (i, _), row, f in zip(mine, res["rewards"], res["infra"])}
        for part in rt.gather_objects(rows):
            rows.update(part)
        infra_frac = check_infra([f for i in sorted(rows) for f in rows[i][1]], f"held-out evaluation {label}")
        correct = [rows[i][0] for i in sorted(rows)]
        summary = {**summarize(correct, ks=(1, e.samples)), "infra_error_frac": infra_frac}
        k = e.samples
        rt.print(f"held-out pass@1 {label}: {100 * summary['pass@1']:.1f}% "
                 f"(stderr {100 * summary['pass@1_stderr']:.1f}, pass@{k} {100 * summary[f'pass@{k}']:.1f}%, "
                 f"{summary['problems']} problems x {k} samples, infra_error_frac {summary['infra_error_frac']:.3f})")
        return summary

    def fit(self) -> dict:
        before = self.state.get("eval_before") or self.evaluate_heldout("before")
        self.state["eval_before"] = before
        last: dict = {}
        while not self.done():
            t0 = time.perf_counter()
            roll = self.rollout(self.next_problem_indices())
            adv, keep, stats = self.shaped_advantages(roll)
            t1 = time.perf_counter()
            metrics = self.train_on(roll, adv, keep, stats)
            metrics.update(stats)
            metrics.update({"gen_s": roll.gen_s, "score_s": roll.score_s, "train_s": time.perf_counter() - t1,
                            "step_s": time.perf_counter() - t0})
            if metrics.get("skipped") and stats["kept_samples"] == 0:
                self.step += 1  # a batch with nothing to learn from still counts as a step
            self.metrics.log(self.step, metrics)
            last = metrics
            if self.cfg.eval.every and self.step % self.cfg.eval.every == 0:
                res = self.evaluate_heldout(f"at step {self.step}")
                self.metrics.log(self.step, {"heldout_pass@1": res["pass@1"]})
            if self.cfg.run.save_every and self.step % self.cfg.run.save_every == 0:
                self.save()
        after = self.evaluate_heldout("after")
        self.state["eval_after"] = after
        self.save()
        self.save_final()
        self.scorer.shutdown()
        self.close()
        return {"before": before, "after": after, "last": last}


def run_rl(cfg: RLConfig) -> dict:
    return RLTrainer(cfg).fit()


__all__ = ["RLConfig", "RLDataConfig", "RLGenConfig", "RLAlgoConfig", "RLEvalConfig", "RLTrainer", "Rollout", "run_rl",
           "load_problems"]
