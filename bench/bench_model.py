"""Model forward + backward tokens/s on a batch of mixed-length documents: packed vs padded.

    python bench/bench_model.py [--device cpu|cuda] [--out DIR] [--quick]

One random-init Qwen2-shaped model (vt_core.model.from_config) and the same documents (lengths drawn
uniformly in a range, fixed seed) for every contender; each step is forward, a next-token cross-entropy
on the real tokens, and backward:

- ``vt_packed``: vt_core's model on the packed batch (input_ids[T], position_ids[T], cu_seqlens[B+1]).
- ``vt_padded_rows``: vt_core's model on the right-padded [B, L] batch flattened into B documents of
  length L (pad tokens computed, loss on real tokens): the cost of padding alone, same code.
- ``hf_padded``: transformers' Qwen2 model (same config, same weights, SDPA attention) on the
  right-padded [B, L] batch with an attention mask: the usual padded training step.

With right padding and causal attention the real tokens see exactly the same context in all three, so
the losses agree (checked, and recorded). tokens/s counts real tokens only. On CPU the contenders' timed
calls are interleaved (harness.measure_many), so load from other work on the machine hits all alike. The loss
is a plain chunked cross-entropy (logsumexp per token chunk, each chunk recomputed in backward), the same for everyone.

GPU shape (``--device cuda``, what gpu_check.sh runs): a Qwen2-shaped model with Qwen2.5-0.5B's layer
(hidden 896, MLP 4864, 14 q / 2 kv heads) but 8 layers and a 32768 vocabulary (~150M parameters), bf16;
64 documents of 32..2048 tokens (72,610 real tokens; 45% of the padded [64, 2045] batch is padding).
Three contenders, each ``do_bench`` at 200/2000 ms warm-up/repeat budgets after one checked call: about
20-30 s on an H200, model set-up included. Each contender is printed and the partial JSON rewritten as
soon as it is measured (harness.Record).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from harness import Record, bench_argparser, measure_many

# Qwen2-shaped configs (GQA, qkv bias, tied embeddings as in the small Qwen2.5 models).
CONFIGS = {
    "cpu": dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=6,
                num_key_value_heads=2, vocab_size=8192),
    "cuda": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=8, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=32768),
    "quick": dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=512),
}
# documents per batch, (min, max) length
BATCHES = {"cpu": (6, (32, 512)), "cuda": (64, (32, 2048)), "quick": (4, (8, 48))}


def qwen2_config(shape: dict) -> dict:
    return {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "max_position_embeddings": 4096,
        "rope_theta": 1_000_000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        **shape,
    }


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 1024):
    """Mean next-token cross-entropy of hidden [N, D] @ weight[V, D]^T, fp32 logsumexp over chunks of
    ``chunk`` tokens; each chunk's logits are recomputed in backward, so at most one chunk is alive."""

    def chunk_loss(h, w, t):
        logits = F.linear(h, w).float()
        return (torch.logsumexp(logits, dim=-1) - logits.gather(1, t[:, None]).squeeze(1)).sum()

    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk):
        end = start + chunk
        total = total + checkpoint(chunk_loss, hidden[start:end], weight, targets[start:end], use_reentrant=False)
    return total / hidden.shape[0]


def make_batch(num_docs: int, length_range: tuple[int, int], vocab: int, device: str, seed: int = 0) -> dict:
    """Documents as a packed batch and as a right-padded [B, L] batch, with next-token targets."""
    from vt_core.kernels import packing_metadata

    gen = torch.Generator().manual_seed(seed)
    lo, hi = length_range
    lengths = torch.randint(lo, hi + 1, (num_docs,), generator=gen)
    docs = [torch.randint(0, vocab, (int(n),), generator=gen) for n in lengths]
    cu_seqlens, position_ids, _ = packing_metadata(lengths)
    # next-token targets inside each document; each document's last token predicts nothing
    keep = torch.ones(int(lengths.sum()), dtype=torch.bool)
    keep[cu_seqlens[1:].long() - 1] = False
    input_ids = torch.cat(docs)
    targets = torch.cat([torch.cat([d[1:], d[:1]]) for d in docs])[keep]
    width = int(lengths.max())
    padded = torch.zeros(num_docs, width, dtype=torch.int64)
    mask = torch.zeros(num_docs, width, dtype=torch.int64)
    for i, d in enumerate(docs):
        padded[i, : d.numel()] = d
        mask[i, : d.numel()] = 1
    # real, target-bearing positions of the padded batch, in packed order
    pad_keep = torch.zeros(num_docs, width, dtype=torch.bool)
    for i, n in enumerate(lengths.tolist()):
        pad_keep[i, : n - 1] = True
    to = dict(device=device)
    return {
        "lengths": lengths,
        "input_ids": input_ids.to(**to),
        "position_ids": position_ids.to(**to),
        "cu_seqlens": cu_seqlens.to(**to),
        "max_seqlen": width,
        "keep": keep.to(**to),
        "targets": targets.to(**to),
        "padded_ids": padded.to(**to),
        "padded_mask": mask.to(**to),
        "padded_keep": pad_keep.flatten().to(**to),
    }


def hf_twin(model, config: dict, dtype: torch.dtype, device: str):
    """transformers' Qwen2ForCausalLM with the same config and weights (SDPA attention)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hf = Qwen2ForCausalLM(Qwen2Config(**config, attn_implementation="sdpa")).to(dtype=dtype, device=device)
    missing, unexpected = hf.load_state_dict(model.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied: the embedding
    if missing or unexpected:
        raise RuntimeError(f"weights do not map onto transformers' Qwen2: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf


def main() -> None:
    parser = bench_argparser("model")
    args = parser.parse_args()
    import vt_core.model

    preset = "quick" if args.quick else args.device
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    config = qwen2_config(CONFIGS[preset])
    num_docs, length_range = BATCHES[preset]
    model = vt_core.model.from_config(config, dtype=dtype, device=args.device, seed=0)
    hf = hf_twin(model, config, dtype, args.device)
    params = sum(p.numel() for p in model.parameters())
    b = make_batch(num_docs, length_range, config["vocab_size"], args.device)
    num_docs, width = b["padded_ids"].shape
    real_tokens = int(b["lengths"].sum())
    row_cu = torch.arange(0, num_docs * width + 1, width, dtype=torch.int32, device=args.device)
    row_pos = torch.arange(width, device=args.device).repeat(num_docs)

    def step_vt_packed():
        model.zero_grad(set_to_none=True)
        hidden = model(b["input_ids"], b["position_ids"], b["cu_seqlens"], b["max_seqlen"])
        loss = chunked_cross_entropy(hidden[b["keep"]], model.lm_head_weight, b["targets"])
        loss.backward()
        return loss.detach()

    def step_vt_padded_rows():
        model.zero_grad(set_to_none=True)
        hidden = model(b["padded_ids"].flatten(), row_pos, row_cu, width)
        loss = chunked_cross_entropy(hidden[b["padded_keep"]], model.lm_head_weight, b["targets"])
        loss.backward()
        return loss.detach()

    def step_hf_padded():
        hf.zero_grad(set_to_none=True)
        hidden = hf.model(input_ids=b["padded_ids"], attention_mask=b["padded_mask"]).last_hidden_state
        loss = chunked_cross_entropy(hidden.flatten(0, 1)[b["padded_keep"]], hf.lm_head.weight, b["targets"])
        loss.backward()
        return loss.detach()

    steps = {"vt_packed": step_vt_packed, "vt_padded_rows": step_vt_padded_rows, "hf_padded": step_hf_padded}
    print(f"[model] {params / 1e6:.1f}M parameters, {int(b['lengths'].sum())} real tokens in {num_docs} documents; "
          "checking the contenders' losses", flush=True)
    losses = {name: float(fn()) for name, fn in steps.items()}
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    spread = max(losses.values()) - min(losses.values())
    if spread > tol * max(1.0, abs(losses["vt_packed"])):
        raise RuntimeError(f"contenders disagree on the loss: {losses}")

    shapes = {
        "preset": preset,
        "config": config,
        "parameters": params,
        "dtype": str(dtype).removeprefix("torch."),
        "documents": num_docs,
        "length_range": list(length_range),
        "lengths": b["lengths"].tolist(),
        "real_tokens": real_tokens,
        "padded_tokens": num_docs * width,
        "padding_fraction": 1 - real_tokens / (num_docs * width),
        "torch_threads": torch.get_num_threads(),
    }
    notes = (
        "forward + chunked CE on real tokens + backward; tokens_per_s counts real tokens; "
        f"{params / 1e6:.1f}M parameters, {math.ceil(100 * shapes['padding_fraction'])}% of the padded batch is padding"
    )
    results = Record("model", args, shapes=shapes, baseline="hf_padded", notes=notes)

    def add(name, figures):
        figures["tokens_per_s"] = real_tokens / (figures["median_ms"] / 1e3)
        figures["loss"] = losses[name]
        results[name] = figures

    if args.device == "cpu":  # the loss check above was each contender's warm-up call
        measure_many(steps, device="cpu", warmup=0, repeats=2 if args.quick else 3, on_result=add)
    else:
        measure_many(steps, device="cuda", warmup_ms=200, rep_ms=2000, on_result=add)
    path = results.finish()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
