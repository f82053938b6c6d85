"""In-process generation: continuous batching over a paged KV cache, with the trainer's own model.

``Engine(model, tokenizer=None, max_tokens_in_cache=... | kv_budget_bytes=...)`` (or ``Engine(model, tokenizer,
config=EngineConfig(...))``) then ``engine.generate(prompts, SamplingParams(...), n=G)`` returns, per prompt, G
:class:`Completion`s.

The engine is split by role, as nano-vllm's:

- ``config.py``: :class:`EngineConfig`, every option documented;
- ``sequence.py``: a sample in flight (:class:`Sequence`, its :class:`SeqState`) and the typed queue items;
- ``scheduler.py``: admission into prefill batches, cache blocks for decode steps, forking, preemption;
- ``runners.py``: the model's forward for prefill and decode, one runner per decode attention, chosen once;
- ``sampler.py``: the draw of one token per sample (the fused kernel on CUDA, routed rows on CPU);
- ``readback.py``: draws on their way to the host and the stop checks made when they arrive;
- this module: :meth:`Engine.step` (schedule -> run -> postprocess) and :meth:`Engine.generate` around it.

No host sync per token: a step's input tokens are the previous draws, gathered on the device; every host-side
length, block and RNG offset is known without reading tokens back (each step adds one token per sample), and
metadata goes up through pinned memory without a sync. Finished samples free their blocks when they are read
back. The engine holds a reference to the model, so after an optimizer step it generates with the new weights
without a copy. With ``exact_logprobs=True`` the finished samples are re-scored by the trainer's own packed
forward (``vt_core.generation.exact``), so the recorded logprobs equal the trainer's recomputation bitwise on CPU.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch

from vt_core.generation.cache import KVCache
from vt_core.generation.config import EngineConfig
from vt_core.generation.exact import score_completions
from vt_core.generation.graphs import default_buckets, to_device
from vt_core.generation.params import Completion, SamplingParams
from vt_core.generation.readback import Readback
from vt_core.generation.runners import make_runner
from vt_core.generation.sampler import draw
from vt_core.generation.scheduler import Scheduler, derive_seed
from vt_core.generation.sequence import Sequence

__all__ = ["Engine", "EngineConfig", "derive_seed"]


class Engine:
    """Generation engine over a :class:`vt_core.model.CausalLM` (see the module docstring).

    model: the causal LM (its parameters are used in place; call under no FSDP sharding, or after gathering
    full parameters). tokenizer: optional, needed for stop strings and ``Completion.text``. config: an
    :class:`EngineConfig`; its fields may also be given as keyword arguments (they override ``config``'s).
    """

    def __init__(self, model, tokenizer=None, config: EngineConfig | None = None, **options):
        config = dataclasses.replace(config or EngineConfig(), **options)
        cfg = model.config
        if any(w is not None for w in cfg.sliding_windows):
            raise ValueError("Engine: sliding-window layers are not supported by the paged decode path")
        self.model, self.tokenizer = model, tokenizer
        param = model.lm_head_weight
        self.dtype, self.device = param.dtype, param.device
        self.config = config = self._resolve(config, model)
        eos = config.eos_token_id
        if eos is None:
            eos = getattr(tokenizer, "eos_token_id", None)
        if eos is None:
            eos = cfg.hf_config.get("eos_token_id")
        eos = [] if eos is None else (eos if isinstance(eos, list) else [eos])
        self.eos_ids = frozenset(int(e) for e in eos)
        dims = (cfg.num_hidden_layers, config.block_size, cfg.num_key_value_heads, cfg.head_dim)
        if config.kv_budget_bytes is not None:
            self.num_blocks = KVCache.blocks_for_budget(config.kv_budget_bytes, *dims, self.dtype)
        else:
            self.num_blocks = KVCache.blocks_for_tokens(config.max_tokens_in_cache or 65536, config.block_size)
        if self.num_blocks < 1:
            raise ValueError("Engine: the KV cache budget is smaller than one block")
        self.runner = make_runner(config.decode_attention, model, config.batch_buckets, config.cuda_graphs,
                                  config.compile_decode, self.num_blocks)
        self.readback = Readback(tokenizer, self._finished)
        self.scheduler: Scheduler | None = None
        self.cache: KVCache | None = None
        self._on_finish: Callable[[int, int, Completion], None] | None = None
        self.stats = {"preemptions": 0, "prefill_tokens": 0, "decode_steps": 0, "rescore_seconds": 0.0,
                      "rescore_max_abs_diff": 0.0}

    def _resolve(self, config: EngineConfig, model) -> EngineConfig:
        """``config`` with every ``None`` / ``"auto"`` that depends on the model and device decided."""
        native_ok = self.device.type == "cpu" and self.dtype == torch.float32
        mode = config.decode_attention
        if mode == "native" and not native_ok:
            raise ValueError(f"Engine: decode_attention='native' is the C++ CPU kernel (fp32 CPU models), got a "
                             f"{self.dtype} model on {self.device}")
        on_cuda = self.device.type == "cuda"
        graphs, buckets = config.cuda_graphs, config.batch_buckets
        if graphs is None:
            graphs = on_cuda and model.rotary.p["rope_type"] != "dynamic"
        if graphs and not on_cuda:
            raise ValueError("Engine: cuda_graphs needs a model on a CUDA device")
        if graphs and buckets is None:
            buckets = default_buckets(config.max_batch_size)
        if buckets is not None:
            if mode in ("contiguous", "native"):
                raise ValueError("Engine: bucketed decode steps (batch_buckets, cuda_graphs) use "
                                 "decode_attention='paged'")
            mode = "paged"
        if mode == "auto":
            mode = "paged" if self.device.type != "cpu" else "native" if native_ok else "contiguous"
        block_size = config.block_size or (64 if mode == "native" else 16)  # CPU: long runs for the C++ kernel
        lag = (1 if on_cuda else 0) if config.readback_lag is None else config.readback_lag
        if config.compile_decode and mode != "native":
            raise ValueError(f"Engine: compile_decode compiles the native CPU decode step, but decode_attention is "
                             f"{mode!r}")
        return dataclasses.replace(config, decode_attention=mode, block_size=block_size, readback_lag=lag,
                                   cuda_graphs=bool(graphs), batch_buckets=buckets)

    # -- the resolved options, as attributes ----------------------------------------------------
    decode_attention = property(lambda self: self.config.decode_attention, doc="The resolved decode attention.")
    block_size = property(lambda self: self.config.block_size, doc="Tokens per cache block.")
    readback_lag = property(lambda self: self.config.readback_lag, doc="Launches a draw stays unread.")
    cuda_graphs = property(lambda self: self.config.cuda_graphs, doc="Whether decode steps replay CUDA graphs.")
    batch_buckets = property(lambda self: self.config.batch_buckets, doc="Padded batch sizes, or None.")
    exact_logprobs = property(lambda self: self.config.exact_logprobs, doc="Re-score with the trainer's forward.")
    bucketed = property(lambda self: getattr(self.runner, "bucketed", None), doc="The bucketed decode steps.")
    cpu_decode = property(lambda self: getattr(self.runner, "cpu_decode", None), doc="The native decode step.")
    workspace = property(lambda self: getattr(self.runner, "workspace", None), doc="The contiguous K/V mirror.")
    _draws = property(lambda self: self.readback.pending, doc="Launches not read back yet.")

    # -- cache lifetime -------------------------------------------------------------------------
    def allocate_cache(self) -> KVCache:
        """Allocate the KV cache now (``generate`` does it on first use)."""
        if self.cache is None:
            cfg = self.model.config
            self.cache = KVCache(cfg.num_hidden_layers, self.num_blocks, self.block_size, cfg.num_key_value_heads,
                                 cfg.head_dim, self.dtype, self.device)
        return self.cache

    def free_cache(self) -> None:
        """Release the KV cache memory (e.g. before a training phase); the next generate re-allocates it
        (and captures its CUDA graphs again)."""
        self.cache = None
        self.runner.release()

    # -- public entry ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams] | None = None,
                 n: int = 1, on_finish: Callable[[int, int, Completion], None] | None = None) -> list[list[Completion]]:
        """Generate n completions for each prompt (token id lists). Returns one list of n per prompt.

        ``on_finish(prompt_index, sample_index, completion)`` is called as soon as a sample finishes (its
        token ids, finish reason and text are final then), so rewards can be scored while the other samples
        are still generating. With ``exact_logprobs`` the completion's logprobs are replaced by the
        re-scoring pass after the last sample finishes.
        """
        params = params if params is not None else SamplingParams()
        plist = params if isinstance(params, list) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise ValueError(f"generate: {len(plist)} SamplingParams for {len(prompts)} prompts")
        if n < 1:
            raise ValueError(f"generate: n must be >= 1, got {n}")
        cache = self.allocate_cache()
        vocab = self.model.config.vocab_size
        for i, (prompt, p) in enumerate(zip(prompts, plist)):
            if len(prompt) == 0:
                raise ValueError(f"generate: prompt {i} is empty")
            if min(prompt) < 0 or max(prompt) >= vocab:
                raise ValueError(f"generate: prompt {i} has token ids outside [0, {vocab})")
            if len(prompt) + p.max_new_tokens > cache.capacity_tokens:
                raise ValueError(f"generate: prompt {i} ({len(prompt)} tokens) + max_new_tokens {p.max_new_tokens} "
                                 f"exceeds the KV cache ({cache.capacity_tokens} tokens)")
            if p.stop and self.tokenizer is None:
                raise ValueError("generate: stop strings need an Engine with a tokenizer")
        if prompts:
            self.runner.prepare(cache, max(len(pr) + p.max_new_tokens for pr, p in zip(prompts, plist)))
        results = [[Completion() for _ in range(n)] for _ in prompts]
        self._on_finish = on_finish
        self.scheduler = Scheduler(cache, prompts, plist, n, results, self.eos_ids, self.config.max_batch_size,
                                   self.config.max_prefill_tokens, self.stats, self.runner.invalidate)
        try:
            while self.scheduler.has_work() or self.readback.pending:
                self.step()
            self.runner.invalidate()
        finally:
            self._on_finish = None
            self.scheduler = None
            self.readback.pending.clear()
        if self.exact_logprobs:
            self._rescore(prompts, results)
        return results

    def step(self) -> None:
        """One engine step: schedule (admit waiting requests, give running samples their next block), run (the
        prefill batch, then one decode token per running sample), postprocess (read back the draws that are
        ``readback_lag`` launches old: stops, finishes)."""
        sched = self.scheduler
        batch = sched.admit()
        if batch:
            self._prefill(batch)
        if sched.running:
            seqs = sched.schedule_decode(lambda: self._read(0))
            if seqs:
                self.stats["decode_steps"] += 1
                self._record(seqs, *self.runner.decode(self.cache, seqs))
        elif not batch:
            if not self.readback.pending:
                raise RuntimeError("generate: a waiting request fits in no free cache block")
            self._read(0)
            return
        self._read(self.readback_lag)

    # -- run and postprocess --------------------------------------------------------------------
    def _prefill(self, batch) -> None:
        hidden = self.runner.prefill(self.cache, batch)
        lens = [len(p.tokens) for p in batch]
        self.stats["prefill_tokens"] += sum(lens)
        new, rows = self.scheduler.start(batch)
        if new:
            ends = torch.tensor(lens).cumsum(0) - 1
            logits = self.model.logits(hidden[to_device(ends[rows], self.device)])
            self._record(new, *draw(new, logits))

    def _record(self, seqs: list[Sequence], tokens, raw, proc) -> None:
        """Queue a launch's draws for read-back; samples that drew their last allowed token leave the batch."""
        self.scheduler.advance(seqs, tokens)
        self.readback.push(seqs, tokens, raw, proc)

    def _read(self, keep: int) -> None:
        if self.readback.drain(keep):
            self.scheduler.prune()

    def _finished(self, s: Sequence) -> None:
        self.scheduler.release(s)
        if self.tokenizer is not None:
            s.out.text = self.tokenizer.decode(s.out.token_ids, skip_special_tokens=True)
        if self._on_finish is not None:
            self._on_finish(s.req, s.index, s.out)

    def _rescore(self, prompts, results) -> None:
        start = time.perf_counter()
        flat = [(prompts[i], c) for i, group in enumerate(results) for c in group]
        scores = score_completions(self.model, [p for p, _ in flat], [c.token_ids for _, c in flat],
                                   self.config.score_tokens)
        diff = 0.0
        for (_, c), lp in zip(flat, scores):
            if c.token_ids:
                diff = max(diff, float((lp - torch.tensor(c.logprobs)).abs().max()))
            c.sampler_logprobs, c.logprobs = c.logprobs, lp.tolist()
        self.stats["rescore_seconds"] += time.perf_counter() - start
        self.stats["rescore_max_abs_diff"] = max(self.stats["rescore_max_abs_diff"], diff)
