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
from dataclasses import dataclass, field

import torch

from vt_core import model as vt_model
from vt_core.data import pack_rl, pack_rl_shared, shared_prompt_attention
from vt_core.eval import encode_prompt, evaluate, summarize
from vt_core.generation import SamplingParams, derive_seed
from vt_core.generation.exact import pad_for_invariance, per_document_attention
from vt_core.kernels import RLLossConfig, group_advantages, linear_logprobs, linear_rl_loss
from vt_core.rewards.infra import check_infra, infra_record
from vt_core.rewards.scorer import RewardScorer
from vt_core.rewards.selfcheck import self_check, verifiers_of
from vt_core.rewards.shaping import apply_overlong_penalty, long2short
from vt_core.trainer.common import ModelSection, OptimSection, RunSection, TrainerCore


@dataclass
class RLData:
    """Problems to train and evaluate on."""

    path: str = ""
    """Local JSONL of problems (prompt + verifier fields). Empty: the embedded tasks of ``domain``."""
    heldout_path: str = ""
    """Held-out problems for before/after evaluation. Empty: the embedded held-out split."""
    domain: str = "code"
    """Embedded task set used when the paths are empty: code | math | stem | instruct."""
    prompts_per_step: int = 64
    group_size: int = 8
    """Samples per prompt (the GRPO group)."""
    max_prompt_tokens: int = 1024
    """Longer prompts are dropped when the stage starts (counted in the log)."""


@dataclass
class GenSection:
    """Sampling during RL."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    kv_cache_tokens: int = 262144
    """KV cache size of the engine, in tokens."""
    reward_workers: int = 4
    """Verifier threads (each code verification runs in its own sandboxed process)."""
    exact_logprobs: bool = False
    """Record the sampler's logprobs with the trainer's own forward (Engine(exact_logprobs=True)) and run the
    training forward in the same batch-invariant form (per-document attention, invariance padding), so the
    ratio's denominator is exactly the trainer's: sampler_logp_diff is 0 in fp32 on CPU. Costs one extra
    forward over the rollout and a slower attention in training."""


@dataclass
class AlgoSection:
    """Advantages, filtering and shaping."""

    estimator: str = "grpo"
    """grpo | dr_grpo | rloo | reinforce_pp."""
    mgpo_lambda: float = 0.0
    """MGPO weight exp(-lambda * KL(p || 0.5)) on each group's advantages; 0 is plain GRPO."""
    drop_zero_variance: bool = True
    """Drop groups whose rewards are all equal before backward (dynamic filtering)."""
    overlong_buffer: int = 0
    """Linear overlong penalty over the last N tokens of max_new_tokens (0: off)."""
    overlong_coef: float = 1.0
    long2short_lambda: float = 0.0
    """Zero-sum Long2Short bonus for shorter correct answers (0: off; VibeThinker uses 0.2)."""
    updates_per_batch: int = 1
    """Optimizer steps per rollout batch; > 1 switches to old-logprob mode."""
    micro_tokens: int = 8192
    """Token budget of one packed training micro-batch."""
    share_prompts: bool = False
    """Training forward with each group's prompt once (vt_core.data.pack_rl_shared): the same loss and
    gradients, (L - 1) + sum(1 + |c|) tokens per group instead of sum(L + |c|). Its attention is a dense masked
    SDPA per (sub-)group, so it is for short completions, as in the embedded default; not with
    --gen.exact_logprobs (whose bitwise forward is the unshared one)."""
    share_max_tokens: int = 2048
    """With share_prompts: groups are split into sub-groups of at most this many tokens (the dense mask's
    width), and a step with a (prompt, completion) pair longer than this trains unshared (pack_rl)."""


@dataclass
class EvalSection:
    """Held-out evaluation before and after training (and every N steps)."""

    problems: int = 256
    """Held-out problems evaluated (the first N)."""
    samples: int = 4
    """Samples per problem (pass@1 is their mean; pass@k from the same samples)."""
    temperature: float = 1.0
    every: int = 0
    """Also evaluate every N steps (0: only before and after)."""


@dataclass
class RLConfig:
    """RL stage config (sections: model, optim, run, data, gen, algo, loss, eval)."""

    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimSection = field(default_factory=lambda: OptimSection(lr=1e-6, max_grad_norm=1.0))
    run: RunSection = field(default_factory=lambda: RunSection(out_dir="runs/rl"))
    data: RLData = field(default_factory=RLData)
    gen: GenSection = field(default_factory=GenSection)
    algo: AlgoSection = field(default_factory=AlgoSection)
    loss: RLLossConfig = field(default_factory=RLLossConfig)
    eval: EvalSection = field(default_factory=EvalSection)


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
            g = torch.Generator().manual_seed(self.cfg.run.seed * 7919 + self.state["epoch"])
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

    def rollout(self, indices: list[int]) -> dict:
        """Generate and score this process's share of ``indices``; returns per-sample lists."""
        rt, n = self.rt, self.cfg.data.group_size
        mine = [(pos, i) for pos, i in enumerate(indices) if pos % rt.world_size == rt.rank]
        seeds = [derive_seed(self.cfg.run.seed, self.step * 1_000_003 + i) for _, i in mine]
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
        return {"positions": [pos for pos, _ in mine], "indices": [i for _, i in mine], "outputs": outs,
                "rewards": [[r.reward for r in row] for row in results],
                "infra": [[infra_record(r) for r in row] for row in results],
                "gen_s": gen_s, "score_s": time.perf_counter() - t0 - gen_s}

    # -- training -------------------------------------------------------------------------------
    def shaped_advantages(self, roll: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Global (all processes) shaping and advantages; returns this process's advantages, keep mask, stats.

        Infrastructure failures (rewards that are not facts about their completion) are counted as
        ``infra_error_frac``; a group holding one is not trained on, and a step where more than half the
        samples hit one raises InfrastructureFailure on every process (the same gathered numbers)."""
        rt, a, n = self.rt, self.cfg.algo, self.cfg.data.group_size
        local = {pos: (r, [len(c.token_ids) for c in g], [c.finish_reason for c in g], f)
                 for pos, r, g, f in zip(roll["positions"], roll["rewards"], roll["outputs"], roll["infra"])}
        for part in rt.gather_objects(local):
            local.update(part)
        order = sorted(local)
        failures = [f for pos in order for f in local[pos][3]]
        infra_frac = check_infra(failures, f"RL step {self.step}")
        rewards = torch.tensor([r for pos in order for r in local[pos][0]], dtype=torch.float32)
        lengths = torch.tensor([x for pos in order for x in local[pos][1]], dtype=torch.float32)
        raw = rewards.clone()
        if a.overlong_buffer:
            rewards = apply_overlong_penalty(rewards, lengths, self.cfg.gen.max_new_tokens, a.overlong_buffer, a.overlong_coef)
        if a.long2short_lambda:
            rewards = long2short(rewards, lengths.clamp(min=1), group_size=n, correct=raw > 0.5, lam=a.long2short_lambda)
        adv, _, zero_var = group_advantages(rewards, group_size=n, estimator=a.estimator, mgpo_lambda=a.mgpo_lambda,
                                            return_zero_variance=True)
        keep = ~zero_var if a.drop_zero_variance else torch.ones_like(zero_var)
        infra_group = torch.tensor([f is not None for f in failures]).view(-1, n).any(dim=1)
        keep &= ~infra_group.repeat_interleave(n)
        truncated = sum(fr == "length" for pos in order for fr in local[pos][2])
        stats = {"reward": float(rewards.mean()), "pass_rate": float((raw > 0.5).float().mean()),
                 "infra_error_frac": infra_frac,
                 "zero_variance_frac": float(zero_var.float().view(-1, n)[:, 0].mean()),
                 "truncation_ratio": truncated / len(raw), "response_len": float(lengths.mean())}
        rows = {pos: k for k, pos in enumerate(order)}
        sel = torch.tensor([rows[pos] * n + j for pos in roll["positions"] for j in range(n)], dtype=torch.long)
        global_kept = int(keep.sum())
        kept_tokens = int(lengths[keep].sum())
        return adv[sel], keep[sel], {**stats, "kept_samples": global_kept, "kept_tokens": kept_tokens}

    def train_on(self, roll: dict, adv: torch.Tensor, keep: torch.Tensor, stats: dict) -> dict:
        rt, cfg = self.rt, self.cfg
        prompts, comps, logps, advs = [], [], [], []
        flat = [(i, c) for i, g in zip(roll["indices"], roll["outputs"]) for c in g]
        for (i, c), a, k in zip(flat, adv.tolist(), keep.tolist()):
            if k and c.token_ids:
                prompts.append(self.prompt_ids(i))
                comps.append(c.token_ids)
                logps.append(torch.tensor(c.logprobs))
                advs.append(a)
        metrics_acc: dict[str, float] = {}
        loss_total = 0.0
        if stats["kept_samples"] == 0:
            return {"loss": 0.0, "skipped": 1.0}
        loss_cfg = cfg.loss
        if loss_cfg.aggregation == "constant" and not loss_cfg.max_tokens:
            loss_cfg = RLLossConfig(**{**loss_cfg.__dict__, "max_tokens": stats["kept_samples"] * cfg.gen.max_new_tokens})
        micro = self.pack(prompts, comps)
        if cfg.gen.exact_logprobs:  # per-token values scattered onto [T] keep their indices
            micro = [dataclasses.replace(mb, batch=pad_for_invariance(mb.batch)) for mb in micro]
        unit = "tokens" if loss_cfg.aggregation == "token_mean" else "seqs"
        total_units = stats["kept_tokens"] if unit == "tokens" else stats["kept_samples"]
        old = None
        result = {}
        most = rt.all_reduce_max(len(micro))  # FSDP2: every process runs as many passes (idle_passes)
        for update in range(cfg.algo.updates_per_batch):
            if cfg.algo.updates_per_batch > 1 and old is None:
                with torch.no_grad():
                    old = [self._logprobs(self.model, mb) for mb in micro]
                self.idle_passes(len(micro), most, backward=False)
            loss_total, metrics_acc = 0.0, {}
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
                units = int(b.loss_mask.sum()) if unit == "tokens" else len(mb.sample_ids)
                share = units / max(total_units, 1) if loss_cfg.aggregation != "constant" else 1.0
                self.backward(loss, share)
                loss_total += float(loss.detach()) * share
                for k, v in met.items():
                    metrics_acc[k] = metrics_acc.get(k, 0.0) + float(v) * share
            self.idle_passes(len(micro), most)
            # a process that had no micro-batch has no metric names of its own
            names = sorted(set().union(*rt.gather_objects(sorted(metrics_acc))))
            summed = rt.all_reduce_sum([loss_total] + [metrics_acc.get(k, 0.0) for k in names])
            loss_total = summed[0]
            metrics_acc = dict(zip(names, summed[1:]))
            result = self.optimizer_step(loss_total)
        return {"loss": loss_total, **metrics_acc, **result}

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
        rows = {i: ([r > 0.5 for r in row], f) for (i, _), row, f in zip(mine, res["rewards"], res["infra"])}
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
            metrics.update({"gen_s": roll["gen_s"], "score_s": roll["score_s"], "train_s": time.perf_counter() - t1,
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


__all__ = ["RLConfig", "RLData", "GenSection", "AlgoSection", "EvalSection", "RLTrainer", "run_rl", "load_problems"]
