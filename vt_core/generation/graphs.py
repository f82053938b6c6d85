"""Decode steps padded to bucketed batch sizes, replayed as CUDA graphs on CUDA.

A decode step's launches depend only on the batch size (the block table has a fixed width), so one CUDA
graph per batch-size bucket (1, 2, 4, ..., max_batch_size) replays every step: the running batch is padded
up to the next bucket. Each bucket owns static input buffers (token ids, positions, cache slots, context
lengths, the sampling columns, the block table) that a step fills with non-blocking copies before the
replay; the graph runs the model's forward with the paged-KV attention hook, the LM head and the fused
sampling kernel, and leaves tokens and both logprobs in its static outputs, which the step clones right
away (so graphs can be replayed in any order). Padding rows write nothing to the cache (slot -1), attend
over one cached position of block 0 and sample greedily; their outputs are dropped.

Without ``use_graphs`` (CPU, or CUDA with graphs off) the same padded step runs eagerly: that is how the
padding is tested on CPU (padded steps give the tokens of unpadded ones).

A captured graph holds the addresses of the model's parameters, the KV cache and the rotary tables: the
engine drops its :class:`BucketedDecode` when the cache is freed or a parameter's storage moved (e.g. a
fresh FSDP gather), and a new one captures again. Optimizer steps update parameters in place and need
nothing. Each graph uses its own memory pool (no ordering constraint between buckets; the largest
bucket's logits dominate that memory).
"""

from __future__ import annotations

import torch

from vt_core.generation.cache import block_table
from vt_core.kernels.attention import paged_decode_attention, write_kv_cache
from vt_core.kernels.sampling import sample_prevalidated


def default_buckets(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two below ``max_batch_size``, then ``max_batch_size`` itself."""
    out, b = [], 1
    while b < max_batch_size:
        out.append(b)
        b *= 2
    return (*out, max_batch_size)


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without a host sync: pinned and copied non-blocking on CUDA (the caching
    host allocator keeps the pinned block until the copy has run)."""
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


class _Bucket:
    def __init__(self, size: int, width: int, device: torch.device):
        self.ids = torch.zeros(size, dtype=torch.int64, device=device)
        self.ints = torch.zeros(6, size, dtype=torch.int64, device=device)  # pos, slot, ctx, top_k, seed, offset
        self.floats = torch.zeros(3, size, dtype=torch.float32, device=device)  # temperature, top_p, min_p
        self.table = torch.zeros(size, width, dtype=torch.int32, device=device)
        self.graph = None
        self.out: tuple | None = None


class BucketedDecode:
    """Padded (and on CUDA graph-replayed) decode steps; see the module docstring.

    model: the causal LM; cache: the engine's ``KVCache``; buckets: the padded batch sizes (the largest
    bounds the batch); width: block-table entries per row (enough for the longest sequence); use_graphs:
    capture one CUDA graph per bucket on first use and replay it.
    """

    def __init__(self, model, cache, buckets, width: int, use_graphs: bool):
        if use_graphs and cache.k.device.type != "cuda":
            raise ValueError("BucketedDecode: CUDA graphs need the model and cache on a CUDA device")
        self.model, self.cache = model, cache
        self.buckets = tuple(sorted(set(int(b) for b in buckets)))
        self.width, self.use_graphs = width, use_graphs
        self.device = cache.k.device
        self._bucket: dict[int, _Bucket] = {}
        self.captured = 0

    def bucket_for(self, batch: int) -> int:
        for b in self.buckets:
            if b >= batch:
                return b
        raise ValueError(f"BucketedDecode: batch {batch} exceeds the largest bucket {self.buckets[-1]}")

    def step(self, ids: torch.Tensor, positions: list[int], slots: list[int], tables: list[list[int]],
             params: list, seeds: list[int], offsets: list[int]):
        """One decode step for B rows: input token ids [B] (on the device), positions, cache slots, block lists,
        ``SamplingParams``, seeds and RNG offsets per row. Returns (tokens int64, raw fp32, processed fp32) [B]."""
        B = len(positions)
        size = self.bucket_for(B)
        if size not in self._bucket:
            self._bucket[size] = _Bucket(size, self.width, self.device)
        st = self._bucket[size]
        pad = size - B
        ctx = [p + 1 for p in positions]
        ints = torch.tensor([positions + [0] * pad, slots + [-1] * pad, ctx + [1] * pad,
                             [p.top_k for p in params] + [0] * pad, seeds + [0] * pad, offsets + [0] * pad],
                            dtype=torch.int64)
        floats = torch.tensor([[p.temperature for p in params] + [0.0] * pad, [p.top_p for p in params] + [1.0] * pad,
                               [p.min_p for p in params] + [0.0] * pad], dtype=torch.float32)
        width = max(len(t) for t in tables)
        if width > self.width:
            raise ValueError(f"BucketedDecode: a sequence holds {width} blocks, the table has {self.width}")
        # entries past a row's last block are never read by the kernel; stale ones from earlier steps stay valid ids
        table = block_table(tables + [[]] * pad)
        st.ints.copy_(to_device(ints, self.device), non_blocking=True)
        st.floats.copy_(to_device(floats, self.device), non_blocking=True)
        st.table[:, :width].copy_(to_device(table, self.device), non_blocking=True)
        st.ids[:B].copy_(ids)
        if pad:
            st.ids[B:].zero_()
        if not self.use_graphs:
            out = self._forward(st)
        else:
            if st.graph is None:
                self._capture(st)
            st.graph.replay()
            out = st.out
        return tuple(t[:B].clone() for t in out)

    def _forward(self, st: _Bucket):
        cache, layers = self.cache, self.model.model.layers
        pos, slots, ctx = st.ints[0], st.ints[1], st.ints[2].to(torch.int32)

        def attention(i, q, k, v):
            write_kv_cache(k, v, cache.k[i], cache.v[i], slots)
            return paged_decode_attention(q, cache.k[i], cache.v[i], st.table, ctx,
                                          softmax_scale=layers[i].self_attn.scale)

        hidden = self.model(st.ids, pos, None, None, attention)
        logits = self.model.logits(hidden)
        return sample_prevalidated(logits, st.floats[0], st.ints[3], st.floats[1], st.floats[2], st.ints[4], st.ints[5])

    def _capture(self, st: _Bucket) -> None:
        # warm-up on a side stream (Triton compiles, lazily built device tables); it rewrites this step's own
        # K/V into the same slots with the same values, so running it is harmless
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._forward(st)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            st.out = self._forward(st)
        st.graph = graph
        self.captured += 1
