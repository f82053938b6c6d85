"""Model runners: the forward passes of prefill batches and decode steps, one class per decode attention.

The engine picks one at construction (``make_runner``, from ``EngineConfig.decode_attention`` and the bucket
settings) and never branches on the backend again:

- :class:`PagedRunner` (``"paged"``): ``write_kv_cache`` + ``paged_decode_attention`` on the block tables;
- :class:`BucketedRunner` (``"paged"`` with ``batch_buckets``): the same steps padded to batch-size buckets and,
  on CUDA, replayed as CUDA graphs (``vt_core.generation.graphs``);
- :class:`NativeRunner` (``"native"``): ``paged_decode_native``, the C++ CPU kernel, straight on the block tables,
  for the prefill too (``vt_core.generation.cpu_decode``);
- :class:`ContiguousRunner` (``"contiguous"``): a contiguous mirror of the running batch's K/V
  (``vt_core.generation.workspace``).

Prefill is the model's forward over the batch packed as one document per item, with an attention hook that
writes K/V into the cache and runs ``packed_attention`` (the native runner: the C++ kernel, one query row per
prompt token over its own prefix). A decode step returns the step's draws (tokens, raw and processed logprobs).
"""

from __future__ import annotations

import torch

from vt_core.generation.cache import KVCache, block_table
from vt_core.generation.cpu_decode import CpuDecode
from vt_core.generation.graphs import BucketedDecode, to_device
from vt_core.generation.sampler import draw
from vt_core.generation.sequence import PrefillItem, Sequence, last_tokens
from vt_core.generation.workspace import DecodeWorkspace
from vt_core.kernels.attention import packed_attention, paged_decode_attention, paged_decode_native, write_kv_cache

Draws = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class PagedRunner:
    """Prefill with ``packed_attention``, decode with ``paged_decode_attention`` (any device and dtype)."""

    name = "paged"

    def __init__(self, model):
        self.model = model
        self.layers = model.model.layers

    def prepare(self, cache: KVCache, longest: int) -> None:
        """Called before a ``generate`` whose longest sequence has ``longest`` tokens."""

    def invalidate(self) -> None:
        """The cache's contents moved (a sample was preempted): drop anything derived from them."""

    def release(self) -> None:
        """The cache was freed (or one ``generate`` ended): drop what refers to it."""

    def prefill(self, cache: KVCache, batch: list[PrefillItem]) -> torch.Tensor:
        """Write the batch's K/V into its blocks; returns the hidden states [tokens, D] of the packed batch."""
        dev = cache.k.device
        ids, pos, slots, lens = [], [], [], []
        for p in batch:
            ids.extend(p.tokens)
            pos.extend(range(len(p.tokens)))
            slots.extend(cache.slots(p.blocks, 0, len(p.tokens)))
            lens.append(len(p.tokens))
        cu = to_device(torch.tensor([0] + lens, dtype=torch.int64).cumsum(0).to(torch.int32), dev)
        slot_t = to_device(torch.tensor(slots, dtype=torch.int64), dev)
        attention = self.prefill_attention(cache, batch, lens, pos, slot_t, cu)
        ids_t, pos_t = to_device(torch.tensor(ids), dev), to_device(torch.tensor(pos), dev)
        return self.model(ids_t, pos_t, cu, max(lens), attention)

    def prefill_attention(self, cache, batch, lens, pos, slot_t, cu):
        """The prefill's attention hook: write K/V, then causal packed attention per document."""
        layers = self.layers

        def attention(i, q, k, v):
            write_kv_cache(k, v, cache.k[i], cache.v[i], slot_t)
            attn = layers[i].self_attn
            return packed_attention(q, k, v, cu, max(lens), causal=True, softmax_scale=attn.scale, window=attn.window)

        return attention

    @staticmethod
    def step_inputs(cache: KVCache, seqs: list[Sequence]):
        """(positions, slot of each new token as a device tensor) of a decode step."""
        bs = cache.block_size
        positions = [len(s) - 1 for s in seqs]
        slots = [s.blocks[p // bs] * bs + p % bs for s, p in zip(seqs, positions)]
        return positions, slots

    def decode(self, cache: KVCache, seqs: list[Sequence]) -> Draws:
        """One token for every sample of ``seqs`` (each has a block for its next position)."""
        dev = cache.k.device
        positions, slots = self.step_inputs(cache, seqs)
        ids = last_tokens(seqs, dev)
        slot_t = to_device(torch.tensor(slots), dev)
        table = to_device(block_table([s.blocks for s in seqs]), dev)
        ctx = to_device(torch.tensor([p + 1 for p in positions], dtype=torch.int32), dev)
        layers = self.layers

        def attention(i, q, k, v):
            write_kv_cache(k, v, cache.k[i], cache.v[i], slot_t)
            return paged_decode_attention(q, cache.k[i], cache.v[i], table, ctx,
                                          softmax_scale=layers[i].self_attn.scale)

        hidden = self.model(ids, to_device(torch.tensor(positions), dev), None, None, attention)
        return draw(seqs, self.model.logits(hidden))


class BucketedRunner(PagedRunner):
    """Paged decode steps padded to ``buckets`` batch sizes, replayed as CUDA graphs when ``use_graphs``."""

    def __init__(self, model, buckets: tuple[int, ...], use_graphs: bool, num_blocks: int):
        super().__init__(model)
        self.buckets, self.use_graphs, self.num_blocks = buckets, use_graphs, num_blocks
        self.bucketed: BucketedDecode | None = None
        self._param_ptrs: tuple = ()

    def prepare(self, cache: KVCache, longest: int) -> None:
        """(Re)build the bucketed steps when none exist, a parameter's storage moved (graphs hold parameter
        addresses) or a sequence of ``longest`` tokens outgrows their block table."""
        ptrs = tuple(p.data_ptr() for p in self.model.parameters())
        need = -(-longest // cache.block_size)
        if self.bucketed is None or ptrs != self._param_ptrs or need > self.bucketed.width:
            width = min(1 << (need - 1).bit_length(), self.num_blocks)  # a power of two: few recaptures
            self.bucketed = BucketedDecode(self.model, cache, self.buckets, width, self.use_graphs)
            self._param_ptrs = ptrs

    def release(self) -> None:
        self.bucketed = None

    def decode(self, cache: KVCache, seqs: list[Sequence]) -> Draws:
        positions, slots = self.step_inputs(cache, seqs)
        ids = last_tokens(seqs, cache.k.device)
        return self.bucketed.step(ids, positions, slots, [s.blocks for s in seqs], [s.params for s in seqs],
                                  [s.seed for s in seqs], [s.sampled for s in seqs])


class NativeRunner(PagedRunner):
    """The C++ CPU kernel on the block tables for prefill and decode (fp32 CPU models); ``compile`` runs the
    decode step through ``torch.compile`` (``vt_core.generation.cpu_decode``)."""

    name = "native"

    def __init__(self, model, compile: bool):
        super().__init__(model)
        self.compile = compile
        self.cpu_decode: CpuDecode | None = None

    def prefill_attention(self, cache, batch, lens, pos, slot_t, cu):
        """Each prompt token is a query row of the C++ decode attention over its own prefix in the cache (written
        first): rows of one prompt share its block table. No padding or L x L mask."""
        table = block_table([p.blocks for p in batch]).repeat_interleave(torch.tensor(lens), dim=0)
        ctx = torch.tensor(pos, dtype=torch.int32) + 1
        layers = self.layers

        def attention(i, q, k, v):
            cache.write(i, slot_t, k, v)
            return paged_decode_native(q, cache.k[i], cache.v[i], table, ctx, layers[i].self_attn.scale)

        return attention

    def decode(self, cache: KVCache, seqs: list[Sequence]) -> Draws:
        positions, slots = self.step_inputs(cache, seqs)
        ids = last_tokens(seqs, cache.k.device)
        table = block_table([s.blocks for s in seqs])
        ctx = torch.tensor([p + 1 for p in positions], dtype=torch.int32)
        if self.cpu_decode is None:
            self.cpu_decode = CpuDecode(self.model, self.compile)
        logits = self.cpu_decode.step(cache, ids, torch.tensor(positions), torch.tensor(slots), table, ctx)
        return draw(seqs, logits)


class ContiguousRunner(PagedRunner):
    """Decode attention over a contiguous mirror of the running batch's K/V (CPU models in any dtype)."""

    name = "contiguous"

    def __init__(self, model):
        super().__init__(model)
        self.workspace: DecodeWorkspace | None = None

    def invalidate(self) -> None:
        self.workspace = None  # a resumed sample's K/V is recomputed: rebuild the mirror from the cache

    release = invalidate

    def decode(self, cache: KVCache, seqs: list[Sequence]) -> Draws:
        dev = cache.k.device
        positions, slots = self.step_inputs(cache, seqs)
        ids = last_tokens(seqs, dev)
        slot_t = to_device(torch.tensor(slots), dev)
        if self.workspace is None:
            self.workspace = DecodeWorkspace(cache, len(self.layers))
        ws, layers = self.workspace, self.layers
        plan = ws.plan(seqs, positions)

        def attention(i, q, k, v):
            cache.write(i, slot_t, k, v)
            return ws.attend(i, q, k, v, plan, layers[i].self_attn.scale)

        hidden = self.model(ids, to_device(torch.tensor(positions), dev), None, None, attention)
        return draw(seqs, self.model.logits(hidden))


def make_runner(decode_attention: str, model, batch_buckets: tuple[int, ...] | None, cuda_graphs: bool,
                compile_decode: bool, num_blocks: int) -> PagedRunner:
    """The runner of a resolved ``decode_attention`` ("paged", "native" or "contiguous")."""
    if batch_buckets is not None:
        return BucketedRunner(model, batch_buckets, cuda_graphs, num_blocks)
    if decode_attention == "native":
        return NativeRunner(model, compile_decode)
    if decode_attention == "contiguous":
        return ContiguousRunner(model)
    return PagedRunner(model)
