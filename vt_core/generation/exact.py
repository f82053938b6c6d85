"""Exact sampler logprobs: re-score finished samples with the trainer's own forward.

The decode path (paged KV cache, one query row per sequence, logits from ``model.logits``) and the
trainer's packed forward (``packed_attention`` over whole documents, ``linear_logprobs`` in token chunks)
reduce in different orders, so their fp32 logprobs differ by ~1e-7..1e-6. Instead of making every decode
kernel reproduce the training kernels' reduction order, :func:`score_completions` runs, once per
generation phase, exactly what the RL trainer runs on the finished (prompt, completion) pairs: documents
packed as ``vt_core.data.pack_rl`` packs them, ``model(input_ids, position_ids, cu_seqlens, max_seqlen)``
with the default attention, then ``linear_logprobs`` with ``model.lm_head_weight`` on the rows that predict
completion tokens (the trainer runs it on every row; per-row invariance makes the two agree).

Why a different packing in the trainer gives the same bits (fp32, CPU; checked by tests/test_engine_exact.py):

- every op of the forward except the matmuls and attention works row by row;
- attention is computed per document, each on its own unpadded q/k/v: :func:`per_document_attention`,
  an attention hook for the model's forward. ``packed_attention``'s torch path batches documents of
  similar length into one padded SDPA call, and padding changes a document's bits (a few 1e-7), so the
  trainer must pass this hook too (``model(..., attention=per_document_attention(model, cu_seqlens))``)
  when it wants the bitwise guarantee; the engine's re-scoring always uses it;
- a matmul row's result does not depend on the other rows or the row count M once M is large enough:
  measured on this machine with MKL sgemm, rows of an [M, K] @ [K, N] product differ from the large-M
  result for M in {1, 2, 3} with 1 thread and M in {1..11} minus {4, 8} with 2 threads, and are identical
  for every M >= 12. The packed forward's matmuls have M = T and ``linear_logprobs`` (torch path) takes
  tokens in chunks of 128 (``TORCH_TOKEN_CHUNK``), so T >= 12 and T mod 128 outside 1..11 keep every
  matmul in the invariant range: :func:`invariance_padding` gives the padding document length that
  ensures it. The trainer pads its own micro-batches the same way (``pad_for_invariance``, RL option
  ``gen.exact_logprobs``) for the guarantee to cover them.

Cost: one forward over every prompt + completion token (a prefill-shaped pass, no KV cache) plus the LM
head on the completion tokens, measured by bench/bench_engine.py (``rescore_share``). What it does not cover:
the token was *sampled* from the decode path's logits, so
the sampling distribution differs from the trainer's by that ~1e-7 (the recorded logprobs, and so the
importance ratios, are exact; ``processed_logprobs`` stay the decode path's).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from vt_core.data.packing import first_fit_decreasing, make_packed_batch
from vt_core.kernels import linear_logprobs
from vt_core.kernels.linear_logprobs import TORCH_TOKEN_CHUNK

MIN_MATMUL_ROWS = 12
"""Smallest matmul row count whose per-row results match any larger one (measured, see the module docstring)."""


def invariance_padding(num_tokens: int, chunk: int = TORCH_TOKEN_CHUNK) -> int:
    """Tokens to append (as a separate padding document) to a packed batch of ``num_tokens`` tokens so that
    the packed forward and every ``linear_logprobs`` chunk of ``chunk`` rows have >= MIN_MATMUL_ROWS rows."""
    tail = num_tokens % chunk
    return MIN_MATMUL_ROWS - tail if 0 < tail < MIN_MATMUL_ROWS else 0


def per_document_attention(model, cu_seqlens: torch.Tensor):
    """An attention hook (``model(..., attention=hook)``) computing causal SDPA for each document of the
    packed batch on its own, unpadded, so a document's output does not depend on how it was packed.
    Differentiable (usable in the training forward); one SDPA call per document and layer."""
    bounds = cu_seqlens.tolist()
    layers = model.model.layers

    def attention(i, q, k, v):
        attn = layers[i].self_attn
        rep = q.shape[1] // k.shape[1]
        outs = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            qs = q[start:end].transpose(0, 1)
            ks = k[start:end].transpose(0, 1).repeat_interleave(rep, dim=0)
            vs = v[start:end].transpose(0, 1).repeat_interleave(rep, dim=0)
            mask = None
            if attn.window is not None:
                pos = torch.arange(end - start, device=q.device)
                mask = (pos[None, :] <= pos[:, None]) & (pos[:, None] - pos[None, :] < attn.window)
            outs.append(F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, is_causal=mask is None,
                                                       scale=attn.scale).transpose(0, 1))
        return torch.cat(outs)

    return attention


def pad_for_invariance(batch):
    """``batch`` (a PackedBatch) with a padding document appended when :func:`invariance_padding` asks for
    one (no loss on it), so a training forward over it keeps every row's bits; positions of the real
    documents are unchanged, so per-token values scattered onto [T] keep their indices."""
    pad = invariance_padding(batch.num_tokens)
    if not pad:
        return batch
    dev = batch.input_ids.device
    return dataclasses.replace(
        batch,
        input_ids=torch.cat([batch.input_ids, torch.zeros(pad, dtype=batch.input_ids.dtype, device=dev)]),
        position_ids=torch.cat([batch.position_ids, torch.arange(pad, dtype=batch.position_ids.dtype, device=dev)]),
        cu_seqlens=torch.cat([batch.cu_seqlens, batch.cu_seqlens[-1:] + pad]),
        max_seqlen=max(batch.max_seqlen, pad),
        targets=torch.cat([batch.targets, torch.full((pad,), -100, dtype=batch.targets.dtype, device=dev)]),
        loss_mask=torch.cat([batch.loss_mask, torch.zeros(pad, dtype=batch.loss_mask.dtype, device=dev)]),
        seq_lens=[*batch.seq_lens, pad],
        example_ids=[*batch.example_ids, -1],
    )


@torch.no_grad()
def score_completions(model, prompts: list[list[int]], completions: list[list[int]],
                      max_tokens: int = 16384) -> list[torch.Tensor]:
    """fp32 logprobs [len(completion)] of every completion token under the trainer's packed forward.

    Pairs are packed first-fit-decreasing into batches of at most ``max_tokens`` tokens (a longer pair gets a
    batch of its own), each padded by :func:`invariance_padding`. Empty completions give empty tensors.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"score_completions: {len(prompts)} prompts but {len(completions)} completions")
    out = [torch.zeros(0, dtype=torch.float32) for _ in prompts]
    todo = [i for i, c in enumerate(completions) if len(c)]
    if not todo:
        return out
    if any(not prompts[i] for i in todo):
        raise ValueError("score_completions: prompts must be non-empty")
    lengths = [len(prompts[i]) + len(completions[i]) for i in todo]
    capacity = max(max_tokens, max(lengths))
    device = model.lm_head_weight.device
    for bin_ in first_fit_decreasing(lengths, capacity):
        pairs = [todo[j] for j in bin_]
        docs = [(list(prompts[i]) + list(completions[i]), [False] * len(prompts[i]) + [True] * len(completions[i]))
                for i in pairs]
        pad = invariance_padding(sum(lengths[j] for j in bin_))
        if pad:
            docs.append(([0] * pad, [False] * pad))
        b = make_packed_batch(docs).to(device)
        hidden = model(b.input_ids, b.position_ids, b.cu_seqlens, b.max_seqlen,
                       attention=per_document_attention(model, b.cu_seqlens))
        # only the rows whose targets are completion tokens go through the LM head (per-row invariance
        # makes them equal to the trainer's all-rows call); their count is padded like the batch
        rows = b.loss_mask.nonzero().reshape(-1)
        rows = torch.cat([rows, rows[:1].expand(invariance_padding(rows.numel()))])
        lp = linear_logprobs(hidden[rows], model.lm_head_weight, b.targets[rows]).cpu()
        first = 0
        for i in pairs:
            out[i] = lp[first: first + len(completions[i])].clone()
            first += len(completions[i])
    return out
