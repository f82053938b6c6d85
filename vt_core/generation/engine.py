"""In-process generation: continuous batching over a paged KV cache, with the trainer's own model.

``Engine(model, tokenizer=None, max_tokens_in_cache=... | kv_budget_bytes=...)`` then
``engine.generate(prompts, SamplingParams(...), n=G)`` returns, per prompt, G :class:`Completion`s.

How a step works: waiting prompts are admitted in FIFO order while the cache has blocks for them and
the prefill token budget allows; admitted prompts are prefilled together as one packed batch (the
model's forward with an attention hook that writes K/V into the cache and runs ``packed_attention``);
the last prompt position is sampled n times and the n samples share the prompt's full blocks (each gets
its own copy of a partly filled last block). Then every running sample decodes one token
(``paged_decode_attention`` over its blocks; on CPU with an fp32 model the C++ kernel straight on the block
tables, which also serves the prefill, ``vt_core.generation.cpu_decode``; or a contiguous mirror of the
running batch's K/V, ``vt_core.generation.workspace``). On CPU sampling routes each row by its parameters
(``vt_core.generation.sampler``: no sort unless the row uses top-k / top-p; Philox uniforms buffered 64
tokens ahead), with the results of ``vt_core.kernels.sample`` bit for bit; on CUDA the whole batch goes
through the fused sampling kernel. On CUDA decode steps are padded to a batch-size bucket and replayed as
CUDA graphs (``vt_core.generation.graphs``).

No host sync per token: a step's input tokens are the previous draws, gathered on the device; every
host-side length, block and RNG offset is known without reading tokens back (each step adds one token per
sample), and metadata goes up through pinned memory without a sync. Draws come back through pinned memory
and are read ``readback_lag`` launches later (1 on CUDA: the host queues step t+1 before it waits for step
t), which is when stop ids and stop strings are checked; a sample found stopped leaves the batch then, and
the one token it drew meanwhile is dropped. Finished samples free their blocks when they are read back;
when a running sample needs a block and none is free, pending draws are read first (finished samples give
blocks back), then the most recently admitted sample is preempted
(its blocks freed) and later resumes by recomputing its K/V. The engine holds a reference to the model,
so after an optimizer step it generates with the new weights without a copy. With
``exact_logprobs=True`` the finished samples are re-scored by the trainer's own packed forward
(``vt_core.generation.exact``), so the recorded logprobs equal the trainer's recomputation bitwise on CPU.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

import torch

from vt_core.generation.cache import KVCache, block_table
from vt_core.generation.cpu_decode import CpuDecode
from vt_core.generation.exact import score_completions
from vt_core.generation.graphs import BucketedDecode, default_buckets, to_device
from vt_core.generation.params import Completion, SamplingParams
from vt_core.generation.sampler import sample_rows, uniforms_ahead
from vt_core.generation.workspace import DecodeWorkspace
from vt_core.kernels import packed_attention
from vt_core.kernels.attention import paged_decode_attention, paged_decode_native, write_kv_cache
from vt_core.kernels.sampling import sample_prevalidated

_MASK64 = (1 << 64) - 1
_UNIFORMS_AHEAD = 64  # Philox uniforms computed per sample at once (one RNG call per 64 tokens instead of per token)


def derive_seed(seed: int, index: int) -> int:
    """Seed of sample ``index`` of a request seeded with ``seed`` (splitmix64 of the pair), 63 bits."""
    z = (seed + (index + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


class _Seq:
    """One sample in flight.

    Host-side lengths run ahead of the host-side tokens: ``sampled`` counts the tokens drawn, some of which
    may still be on the device (``Engine(readback_lag=...)``); ``out.token_ids`` holds the ones read back.
    ``src`` is (device tensor, row) of the last drawn token, the next decode step's input.
    """

    def __init__(self, req: int, index: int, prompt: list[int], params: SamplingParams, seed: int,
                 stop_ids: frozenset, out: Completion):
        self.req = req
        self.index = index  # which of the request's n samples
        self.prompt = prompt
        self.params = params
        self.seed = seed
        self.stop_ids = stop_ids
        self.out = out
        self.blocks: list[int] = []
        self.uniforms: list[float] = []  # Philox uniforms of offsets uniforms_from.. (plain sampling rows)
        self.uniforms_from = 0
        self.order = 0  # admission order, for picking what to preempt
        self.sampled = 0
        self.src: tuple[torch.Tensor, int] | None = None
        self.state = "waiting"  # waiting | running | drawn (all its tokens drawn, some not read) | done

    def __len__(self) -> int:
        return len(self.prompt) + self.sampled

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.out.token_ids


class _Draw:
    """Tokens and logprobs drawn for ``seqs`` in one launch, on their way to the host."""

    def __init__(self, seqs: list[_Seq], tokens: torch.Tensor, raw: torch.Tensor, proc: torch.Tensor):
        self.seqs = seqs
        if tokens.is_cuda:
            packed = torch.stack([tokens.double(), raw.double(), proc.double()])
            self.host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
            self.host.copy_(packed, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host, self.event = (tokens, raw, proc), None

    def read(self) -> tuple[list[int], list[float], list[float]]:
        if self.event is None:
            tokens, raw, proc = self.host
            return tokens.tolist(), raw.tolist(), proc.tolist()
        self.event.synchronize()
        tokens, raw, proc = self.host.tolist()
        return [int(t) for t in tokens], raw, proc


class Engine:
    """Generation engine over a :class:`vt_core.model.CausalLM` (see the module docstring).

    model: the causal LM (its parameters are used in place; call under no FSDP sharding, or after
    gathering full parameters). tokenizer: optional, needed for stop strings and ``Completion.text``.
    max_tokens_in_cache / kv_budget_bytes: cache size (one of them; default 65,536 tokens).
    block_size: tokens per cache block (None: 64 with the native CPU decode attention, whose reads stream
    faster over longer contiguous runs, else 16). max_prefill_tokens: token budget of one prefill batch.
    max_batch_size: most samples decoding at once. eos_token_id: defaults to the tokenizer's, else the config's.
    exact_logprobs: after generating, re-score every sample with the trainer's packed forward and
    ``linear_logprobs`` (see ``vt_core.generation.exact``) so that ``Completion.logprobs`` equals what the
    trainer recomputes bitwise (fp32, CPU); the decode path's values move to ``sampler_logprobs``.
    score_tokens: token budget of one re-scoring batch.
    decode_attention: "paged" (``paged_decode_attention`` on the block tables), "native" (the C++ CPU kernel
    ``vt_core._C.paged_decode_attention_cpu`` straight on the block tables, prefill included:
    ``vt_core.generation.cpu_decode``; fp32 CPU models), "contiguous" (a contiguous mirror of the running
    batch's K/V, ``vt_core.generation.workspace``; the previous CPU path, more memory) or "auto" (native for
    fp32 CPU models, contiguous for other CPU dtypes, paged on GPU).
    compile_decode: run the native CPU decode step through ``torch.compile`` (Inductor fuses the elementwise
    work around the GEMMs; the first step compiles for tens of seconds; ``vt_core.generation.cpu_decode``).
    readback_lag: launches a drawn token may stay on the device before the host reads it (None: 1 on CUDA,
    0 on CPU). With 1 the host queues step t+1 before it waits for step t's tokens, so the device never
    idles on a per-token sync; a sample that stops on a token is found one step late (its extra token is
    dropped). Tokens, finish reasons and callbacks do not depend on it.
    cuda_graphs: replay decode steps as CUDA graphs at bucketed batch sizes (``vt_core.generation.graphs``;
    None: on when the model is on CUDA and its RoPE is not dynamic, which reads positions back to the host).
    batch_buckets: the padded batch sizes of bucketed decode steps (default with graphs: powers of two up to
    max_batch_size). Given without graphs (e.g. on CPU), padded steps run eagerly.
    """

    def __init__(self, model, tokenizer=None, *, max_tokens_in_cache: int | None = None,
                 kv_budget_bytes: int | None = None, block_size: int | None = None, max_prefill_tokens: int = 8192,
                 max_batch_size: int = 256, eos_token_id: int | list[int] | None = None,
                 exact_logprobs: bool = False, score_tokens: int = 16384, decode_attention: str = "auto",
                 readback_lag: int | None = None, cuda_graphs: bool | None = None,
                 batch_buckets: tuple[int, ...] | None = None, compile_decode: bool = False):
        if max_tokens_in_cache is not None and kv_budget_bytes is not None:
            raise ValueError("Engine: give max_tokens_in_cache or kv_budget_bytes, not both")
        cfg = model.config
        if any(w is not None for w in cfg.sliding_windows):
            raise ValueError("Engine: sliding-window layers are not supported by the paged decode path")
        self.model = model
        self.tokenizer = tokenizer
        self.max_prefill_tokens = max_prefill_tokens
        self.max_batch_size = max_batch_size
        param = model.lm_head_weight
        self.dtype, self.device = param.dtype, param.device
        if eos_token_id is None:
            eos_token_id = getattr(tokenizer, "eos_token_id", None)
        if eos_token_id is None:
            eos_token_id = cfg.hf_config.get("eos_token_id")
        eos = [] if eos_token_id is None else (eos_token_id if isinstance(eos_token_id, list) else [eos_token_id])
        self.eos_ids = frozenset(int(e) for e in eos)
        self.exact_logprobs = exact_logprobs
        self._on_finish: Callable[[int, int, Completion], None] | None = None
        if decode_attention not in ("auto", "paged", "contiguous", "native"):
            raise ValueError("Engine: decode_attention must be 'auto', 'paged', 'contiguous' or 'native', "
                             f"got {decode_attention!r}")
        native_ok = self.device.type == "cpu" and self.dtype == torch.float32
        if decode_attention == "native" and not native_ok:
            raise ValueError(f"Engine: decode_attention='native' is the C++ CPU kernel (fp32 CPU models), got a "
                             f"{self.dtype} model on {self.device}")
        on_cuda = self.device.type == "cuda"
        if cuda_graphs is None:
            cuda_graphs = on_cuda and model.rotary.p["rope_type"] != "dynamic"
        if cuda_graphs and not on_cuda:
            raise ValueError("Engine: cuda_graphs needs a model on a CUDA device")
        if cuda_graphs and batch_buckets is None:
            batch_buckets = default_buckets(max_batch_size)
        if batch_buckets is not None:
            if max(batch_buckets) < max_batch_size:
                raise ValueError(f"Engine: the largest of batch_buckets {tuple(batch_buckets)} must be >= "
                                 f"max_batch_size {max_batch_size}")
            if decode_attention in ("contiguous", "native"):
                raise ValueError("Engine: bucketed decode steps (batch_buckets, cuda_graphs) use decode_attention='paged'")
            decode_attention = "paged"
        if decode_attention == "auto":
            decode_attention = "paged" if self.device.type != "cpu" else "native" if native_ok else "contiguous"
        self.decode_attention = decode_attention
        if block_size is None:  # CPU: long contiguous runs for the C++ kernel's reads; GPU: fine-grained sharing
            block_size = 64 if decode_attention == "native" else 16
        if block_size < 1:
            raise ValueError(f"Engine: block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        dims = (cfg.num_hidden_layers, block_size, cfg.num_key_value_heads, cfg.head_dim)
        if kv_budget_bytes is not None:
            self.num_blocks = KVCache.blocks_for_budget(kv_budget_bytes, *dims, self.dtype)
        else:
            self.num_blocks = KVCache.blocks_for_tokens(max_tokens_in_cache or 65536, block_size)
        if self.num_blocks < 1:
            raise ValueError("Engine: the KV cache budget is smaller than one block")
        self.cuda_graphs, self.batch_buckets = bool(cuda_graphs), batch_buckets
        self.readback_lag = (1 if on_cuda else 0) if readback_lag is None else readback_lag
        if self.readback_lag < 0:
            raise ValueError(f"Engine: readback_lag must be >= 0, got {readback_lag}")
        if compile_decode and decode_attention != "native":
            raise ValueError(f"Engine: compile_decode compiles the native CPU decode step, but decode_attention is "
                             f"{decode_attention!r}")
        self.compile_decode = compile_decode
        self.cpu_decode: CpuDecode | None = None
        self.workspace: DecodeWorkspace | None = None
        self.bucketed: BucketedDecode | None = None
        self._param_ptrs: tuple = ()
        self._draws: deque[_Draw] = deque()
        self.score_tokens = score_tokens
        self.cache: KVCache | None = None
        self._order = 0
        self.stats = {"preemptions": 0, "prefill_tokens": 0, "decode_steps": 0, "rescore_seconds": 0.0,
                      "rescore_max_abs_diff": 0.0}

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
        self.workspace = None
        self.bucketed = None

    def _prepare_bucketed(self, longest: int) -> None:
        """(Re)build the bucketed decode steps when none exist, a parameter's storage moved (graphs hold
        parameter addresses) or a sequence of ``longest`` tokens outgrows their block table."""
        ptrs = tuple(p.data_ptr() for p in self.model.parameters())
        need = -(-longest // self.block_size)
        if self.bucketed is None or ptrs != self._param_ptrs or need > self.bucketed.width:
            width = min(1 << (need - 1).bit_length(), self.num_blocks)  # a power of two: few recaptures
            self.bucketed = BucketedDecode(self.model, self.cache, self.batch_buckets, width, self.cuda_graphs)
            self._param_ptrs = ptrs

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
        if self.batch_buckets is not None and prompts:
            self._prepare_bucketed(max(len(pr) + p.max_new_tokens for pr, p in zip(prompts, plist)))
        results = [[Completion() for _ in range(n)] for _ in prompts]
        self._on_finish = on_finish
        try:
            waiting: deque = deque(("prompt", i) for i in range(len(prompts)))
            running: list[_Seq] = []
            while waiting or running or self._draws:
                admitted = self._admit(waiting, running, prompts, plist, n, results)
                if running:
                    self._decode(running, waiting)
                elif not admitted:
                    if not self._draws:
                        raise RuntimeError("generate: a waiting request fits in no free cache block")
                    self._drain(running, 0)
                    continue
                self._drain(running, self.readback_lag)
            self.workspace = None
        finally:
            self._on_finish = None
            self._draws.clear()
        if self.exact_logprobs:
            self._rescore(prompts, results)
        return results

    def _rescore(self, prompts, results) -> None:
        start = time.perf_counter()
        flat = [(prompts[i], c) for i, group in enumerate(results) for c in group]
        scores = score_completions(self.model, [p for p, _ in flat], [c.token_ids for _, c in flat], self.score_tokens)
        diff = 0.0
        for (_, c), lp in zip(flat, scores):
            if c.token_ids:
                diff = max(diff, float((lp - torch.tensor(c.logprobs)).abs().max()))
            c.sampler_logprobs, c.logprobs = c.logprobs, lp.tolist()
        self.stats["rescore_seconds"] += time.perf_counter() - start
        self.stats["rescore_max_abs_diff"] = max(self.stats["rescore_max_abs_diff"], diff)

    # -- scheduling -----------------------------------------------------------------------------
    def _blocks_needed(self, length: int, copies: int) -> int:
        full, partial = divmod(length, self.block_size)
        return full + (copies if partial else 0)

    def _admit(self, waiting, running, prompts, plist, n, results) -> bool:
        cache = self.cache
        batch, budget, free = [], self.max_prefill_tokens, cache.allocator.num_free
        slots_left = self.max_batch_size - len(running)
        while waiting:
            kind, item = waiting[0]
            length = len(prompts[item]) if kind == "prompt" else len(item) - 1
            blocks = self._blocks_needed(length, n if kind == "prompt" else 1)
            samples = n if kind == "prompt" else 1
            if batch and (length > budget or samples > slots_left):
                break
            if blocks > free or (samples > slots_left and running):
                break
            waiting.popleft()
            batch.append((kind, item, length))
            budget -= length
            free -= blocks
            slots_left -= samples
        if batch:
            self._prefill(batch, running, prompts, plist, n, results)
        return bool(batch)

    def _prefill(self, batch, running, prompts, plist, n, results) -> None:
        cache, bs, dev = self.cache, self.block_size, self.device
        ids, pos, slots, lens, owners = [], [], [], [], []
        for kind, item, length in batch:
            tokens = prompts[item] if kind == "prompt" else item.tokens[:-1]
            blocks = [cache.allocator.allocate() for _ in range(math.ceil(length / bs))]
            owners.append(blocks)
            ids.extend(tokens)
            pos.extend(range(length))
            slots.extend(cache.slots(blocks, 0, length))
            lens.append(length)
        cu = to_device(torch.tensor([0] + lens, dtype=torch.int64).cumsum(0).to(torch.int32), dev)
        slot_t = to_device(torch.tensor(slots, dtype=torch.int64), dev)
        layers = self.model.model.layers

        if self.decode_attention == "native":
            # Each prompt token is a query row of the C++ decode attention over its own prefix in the cache
            # (written first): rows of one prompt share its block table. No padding or L x L mask.
            table = block_table(owners).repeat_interleave(torch.tensor(lens), dim=0)
            ctx = torch.tensor(pos, dtype=torch.int32) + 1

            def attention(i, q, k, v):
                cache.write(i, slot_t, k, v)
                return paged_decode_native(q, cache.k[i], cache.v[i], table, ctx, layers[i].self_attn.scale)
        else:
            def attention(i, q, k, v):
                write_kv_cache(k, v, cache.k[i], cache.v[i], slot_t)
                attn = layers[i].self_attn
                return packed_attention(q, k, v, cu, max(lens), causal=True, softmax_scale=attn.scale,
                                        window=attn.window)

        hidden = self.model(to_device(torch.tensor(ids), dev), to_device(torch.tensor(pos), dev), cu, max(lens), attention)
        self.stats["prefill_tokens"] += len(ids)
        ends = torch.tensor(lens).cumsum(0) - 1
        new: list[_Seq] = []
        rows: list[int] = []
        resumed: list[_Seq] = []
        for b, ((kind, item, length), blocks) in enumerate(zip(batch, owners)):
            if kind == "resume":
                item.blocks = blocks
                self._order += 1
                item.order = self._order
                item.state = "running"
                running.append(item)
                resumed.append(item)
                continue
            p = plist[item]
            base = p.seed if p.seed is not None else int(torch.randint(0, 2**62, ()).item())
            stop_ids = frozenset(p.stop_token_ids) | (frozenset() if p.ignore_eos else self.eos_ids)
            for j in range(n):
                seq = _Seq(item, j, prompts[item], p, derive_seed(base, j), stop_ids, results[item][j])
                if j == 0:
                    seq.blocks = blocks
                else:
                    seq.blocks = list(blocks)
                    for blk in blocks[: length // bs]:
                        cache.allocator.share(blk)
                    if length % bs:
                        copy = cache.allocator.allocate()
                        cache.copy_block(blocks[-1], copy)
                        seq.blocks[-1] = copy
                self._order += 1
                seq.order = self._order
                new.append(seq)
                rows.append(b)
        if resumed:  # a resumed sample's last token (read back before it was preempted) is its next input
            last = to_device(torch.tensor([s.out.token_ids[-1] for s in resumed]), dev)
            for r, s in enumerate(resumed):
                s.src = (last, r)
        if new:
            logits = self.model.logits(hidden[to_device(ends[rows], dev)])
            self._draw(new, logits, running)

    def _decode(self, running: list[_Seq], waiting: deque) -> None:
        cache, bs = self.cache, self.block_size
        for seq in sorted(running, key=lambda s: s.order):
            if seq.state != "running":
                continue  # finished or preempted while making room for an earlier one
            if (len(seq) - 1) // bs < len(seq.blocks):
                continue
            while cache.allocator.num_free == 0 and self._draws:
                self._drain(running, 0)  # finished samples free their blocks
            if seq.state != "running":
                continue
            while cache.allocator.num_free == 0:
                victim = max(running, key=lambda s: s.order)
                self._preempt(victim, running, waiting)
                if victim is seq:
                    break
            if seq.state == "running":
                seq.blocks.append(cache.allocator.allocate())
        if not running:
            return
        dev = self.device
        positions = [len(s) - 1 for s in running]
        slots = [s.blocks[p // bs] * bs + p % bs for s, p in zip(running, positions)]
        ids = self._next_inputs(running)
        layers = self.model.model.layers
        self.stats["decode_steps"] += 1
        batch = list(running)
        if self.batch_buckets is not None:
            offsets = [s.sampled for s in batch]
            out = self.bucketed.step(ids, positions, slots, [s.blocks for s in batch], [s.params for s in batch],
                                     [s.seed for s in batch], offsets)
            self._record(batch, *out, running)
            return
        slot_t = to_device(torch.tensor(slots), dev)
        if self.decode_attention == "contiguous":
            if self.workspace is None:
                self.workspace = DecodeWorkspace(cache, len(layers))
            ws = self.workspace
            plan = ws.plan(running, positions)

            def attention(i, q, k, v):
                cache.write(i, slot_t, k, v)
                return ws.attend(i, q, k, v, plan, layers[i].self_attn.scale)
        else:
            table = to_device(block_table([s.blocks for s in running]), dev)
            ctx = to_device(torch.tensor([p + 1 for p in positions], dtype=torch.int32), dev)
            if self.decode_attention == "native":
                if self.cpu_decode is None:
                    self.cpu_decode = CpuDecode(self.model, self.compile_decode)
                logits = self.cpu_decode.step(cache, ids, torch.tensor(positions), slot_t, table, ctx)
                self._draw(batch, logits, running)
                return

            def attention(i, q, k, v):
                write_kv_cache(k, v, cache.k[i], cache.v[i], slot_t)
                return paged_decode_attention(q, cache.k[i], cache.v[i], table, ctx,
                                              softmax_scale=layers[i].self_attn.scale)

        hidden = self.model(ids, to_device(torch.tensor(positions), dev), None, None, attention)
        self._draw(batch, self.model.logits(hidden), running)

    def _next_inputs(self, seqs: list[_Seq]) -> torch.Tensor:
        """Device tensor of each sample's last drawn token (no host sync: gathered on the device)."""
        first = seqs[0].src[0]
        if first.numel() == len(seqs) and all(s.src[0] is first and s.src[1] == r for r, s in enumerate(seqs)):
            return first
        parts, base, index = {}, 0, []
        for s in seqs:
            t, r = s.src
            if id(t) not in parts:
                parts[id(t)] = (t, base)
                base += t.numel()
            index.append(parts[id(t)][1] + r)
        joined = torch.cat([t for t, _ in parts.values()])
        return joined[to_device(torch.tensor(index), self.device)]

    def _preempt(self, seq: _Seq, running: list[_Seq], waiting: deque) -> None:
        running.remove(seq)
        seq.state = "waiting"
        self.workspace = None  # a resumed sample's K/V is recomputed: rebuild the mirror from the cache
        self.cache.allocator.release(seq.blocks)
        seq.blocks = []
        waiting.appendleft(("resume", seq))
        self.stats["preemptions"] += 1

    # -- sampling and read-back -----------------------------------------------------------------
    def _draw(self, seqs: list[_Seq], logits: torch.Tensor, running: list[_Seq]) -> None:
        """Draw one token per sample of ``seqs`` from logits [len(seqs), V] (on the device)."""
        offsets = [s.sampled for s in seqs]
        if logits.device.type != "cpu":
            def col(values, dtype):
                return to_device(torch.tensor(values, dtype=dtype), logits.device)

            ps = [s.params for s in seqs]
            out = sample_prevalidated(logits, col([p.temperature for p in ps], torch.float32),
                                      col([p.top_k for p in ps], torch.int64), col([p.top_p for p in ps], torch.float32),
                                      col([p.min_p for p in ps], torch.float32), col([s.seed for s in seqs], torch.int64),
                                      col(offsets, torch.int64))
            self._record(seqs, *out, running)
            return
        V = logits.shape[1]
        plain = [s.params.temperature > 0 and not 0 < s.params.top_k < V and s.params.top_p >= 1.0 for s in seqs]
        refill = [r for r, s in enumerate(seqs) if plain[r] and not 0 <= offsets[r] - s.uniforms_from < len(s.uniforms)]
        if refill:
            ahead = uniforms_ahead([seqs[r].seed for r in refill], [offsets[r] for r in refill], _UNIFORMS_AHEAD)
            for r, values in zip(refill, ahead):
                seqs[r].uniforms, seqs[r].uniforms_from = values, offsets[r]
        uniforms = [s.uniforms[o - s.uniforms_from] if p else None for s, o, p in zip(seqs, offsets, plain)]
        out = sample_rows(logits, [s.params for s in seqs], [s.seed for s in seqs], offsets, uniforms)
        self._record(seqs, *out, running)

    def _record(self, seqs: list[_Seq], tokens, raw, proc, running: list[_Seq]) -> None:
        """Queue a launch's draws for read-back; samples that drew their last allowed token leave the batch."""
        for r, s in enumerate(seqs):
            s.sampled += 1
            s.src = (tokens, r)
            if s.state != "running":
                s.state = "running"
                running.append(s)
            if s.sampled >= s.params.max_new_tokens:
                s.state = "drawn"
        running[:] = [s for s in running if s.state == "running"]
        self._draws.append(_Draw(seqs, tokens, raw, proc))

    def _drain(self, running: list[_Seq], keep: int) -> None:
        """Read back launches until at most ``keep`` are still unread; finish the samples that stopped."""
        finished = False
        while len(self._draws) > keep:
            draw = self._draws.popleft()
            for s, t, lr, lp in zip(draw.seqs, *draw.read()):
                if s.state == "done":
                    continue  # drawn after it stopped (read-back lag): dropped
                s.out.token_ids.append(t)
                s.out.logprobs.append(lr)
                s.out.processed_logprobs.append(lp)
                reason = self._finish_reason(s, t)
                if reason is not None:
                    self._finish(s, reason)
                    finished = True
        if finished:
            running[:] = [s for s in running if s.state == "running"]

    def _finish(self, s: _Seq, reason: str) -> None:
        s.state = "done"
        s.out.finish_reason = reason
        self.cache.allocator.release(s.blocks)
        s.blocks = []
        if self.tokenizer is not None:
            s.out.text = self.tokenizer.decode(s.out.token_ids, skip_special_tokens=True)
        if self._on_finish is not None:
            self._on_finish(s.req, s.index, s.out)

    def _finish_reason(self, seq: _Seq, token: int) -> str | None:
        if token in seq.stop_ids:
            return "stop"
        stops = seq.params.stop
        if stops:
            tail = 2 * max(len(x) for x in stops) + 8
            text = self.tokenizer.decode(seq.out.token_ids[-tail:], skip_special_tokens=False)
            if any(x in text for x in stops):
                return "stop"
        if len(seq.out.token_ids) >= seq.params.max_new_tokens:
            return "length"
        return None
