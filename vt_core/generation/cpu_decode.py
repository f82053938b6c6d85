"""The engine's CPU decode step: the model's forward with the C++ paged decode attention, eager or compiled.

Each layer's attention is ``paged_decode_native`` straight on the paged cache: every sequence reads its own
blocks (no gather into a contiguous mirror, no padding to the longest row, no mask). The step's own key
and value are handed to the kernel directly (``k_new`` / ``v_new``) instead of being written first, so the
attention is a pure function; the step returns the new keys and values of every layer and
:meth:`CpuDecode.step` writes them into the cache afterwards with one ``index_copy_`` per cache tensor.

Being pure is what lets the step be compiled: ``CpuDecode(model, compile=True)`` runs it through
``torch.compile(dynamic=True)`` (one graph for every batch size and block-table width: a batch of one or a
one-block table is padded to two, which Dynamo would otherwise specialise, and sizes that happen to be
equal at the first call are not tied together), with the attention as the custom op
``vt_core::paged_decode_native`` (registered in ``vt_core.kernels.attention.paged.native``). Inductor
fuses the elementwise work around the GEMMs (RMSNorm, RoPE, SwiGLU, residuals), which on a small model is most
of a decode step's time in eager mode. The first compiled step takes tens of seconds (Inductor writes C++ and
compiles it; later processes reuse its on-disk cache), so compiling pays off for long generation phases: it is
off unless the engine is asked for it (``Engine(compile_decode=True)``). Parameters are read at every call, so
optimizer steps (in place) need no recompilation.
"""

from __future__ import annotations

import contextlib

import torch
import torch.fx.experimental._config as fx_config

from vt_core.kernels.attention import paged_decode_native


class CpuDecode:
    """Decode steps of ``model`` on CPU (fp32) over a :class:`vt_core.generation.cache.KVCache`."""

    def __init__(self, model, compile: bool = False):
        self.model = model
        self.compiled = compile
        self._fn = torch.compile(self._forward, dynamic=True) if compile else self._forward

    def _forward(self, ids, positions, k_cache, v_cache, table, ctx, threads: int):
        layers = self.model.model.layers
        ks, vs = [], []
        attend = torch.ops.vt_core.paged_decode_native if self.compiled else paged_decode_native

        def attention(i, q, k, v):
            ks.append(k)
            vs.append(v)
            return attend(q, k_cache[i], v_cache[i], table, ctx, layers[i].self_attn.scale, threads, k, v)

        hidden = self.model(ids, positions, None, None, attention)
        return self.model.logits(hidden), torch.stack(ks), torch.stack(vs)

    def step(self, cache, ids, positions, slots, table, ctx) -> torch.Tensor:
        """Logits [B, V] (fp32) of one decode step; the step's keys and values are in the cache after it.

        ids, positions [B] int64; slots [B] int64 (the cache slot of each new token); table int32
        [B, width] (block tables, padded with any valid block); ctx int32 [B] (tokens per sequence, the new
        one included)."""
        B = ids.shape[0]
        if self.compiled and (B == 1 or table.shape[1] == 1):
            # Dynamo specialises sizes 0 and 1: a batch of one, or a table one block wide, would compile a
            # second graph. Pad to 2 instead (an extra row with no context attends to nothing and is dropped).
            if B == 1:
                ids, positions = torch.cat([ids, ids]), torch.cat([positions, positions])
                table, ctx = torch.cat([table, table]), torch.cat([ctx, torch.zeros_like(ctx)])
            if table.shape[1] == 1:
                table = torch.cat([table, table], dim=1)
        # No duck sizing when compiling: sizes equal at the first call (say batch == table width) stay apart.
        with fx_config.patch(use_duck_shape=False) if self.compiled else contextlib.nullcontext():
            logits, ks, vs = self._fn(ids, positions, cache.k, cache.v, table, ctx, torch.get_num_threads())
        logits, ks, vs = logits[:B], ks[:, :B], vs[:, :B]
        L, _, hkv, d = ks.shape
        cache.k.view(L, -1, hkv * d).index_copy_(1, slots, ks.reshape(L, B, hkv * d))
        cache.v.view(L, -1, hkv * d).index_copy_(1, slots, vs.reshape(L, B, hkv * d))
        return logits
