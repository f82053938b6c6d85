"""Packed (varlen) attention and paged decode attention against torch SDPA and FlexAttention.

    python bench/bench_attention.py [--device cpu|cuda] [--out DIR] [--quick] [--threads N]

CPU (fp32, 8 heads, d=64, 2048 tokens in 4 causal documents; forward, and forward+backward):
- ``vt_torch``: vt_core's CPU path, ``packed_attention`` -> per-document SDPA loop (the reference).
- ``sdpa_dense_mask``: one SDPA call over all tokens with a dense [T, T] block-diagonal causal mask.
- ``flex_compiled`` / ``flex_eager``: FlexAttention with a document-causal BlockMask, torch.compile'd and eager.
Each output is checked against the fp64 reference (``max_abs_err``).

CUDA (bf16, Qwen2.5-3B heads: 16 q / 2 kv, d=128, 32K tokens packed from lengths drawn in 256..8192):
forward, backward and forward+backward TFLOP/s on the block-diagonal causal FLOPs of
- ``vt_triton``: ``packed_attention`` (Triton kernels),
- ``sdpa_flash_per_doc``: torch SDPA (flash backend) called once per document,
- ``flex_compiled``: FlexAttention with a document-causal BlockMask (GQA),
- ``flash_attn_varlen``: flash-attn's ``flash_attn_varlen_func`` when it is installed;
plus paged decode attention (64 sequences x 4096 cached tokens, page 16) against its torch reference, in
GB/s of K/V read and as a fraction of the GPU's HBM bandwidth. Setup work (BlockMask, dense mask,
cu_seqlens) is done once outside the timed region; SDPA's GQA expansion of K/V is inside its time.
Results are flat: ``<contender>.forward`` / ``.backward`` / ``.fwd_bwd`` and ``decode.<contender>``.
``backward`` is one backward pass through a fresh forward graph per call (the forward is untimed setup;
no ``retain_graph``, which a compiled FlexAttention with donated buffers refuses).

GPU shape (``--device cuda``, what gpu_check.sh runs): the CUDA shape above, T=32768 bf16 and decode
64 x 4096; 3 contenders x 3 parts, each ``do_bench`` at 25/100 ms warm-up/repeat budgets, plus
FlexAttention's compilation (forward and backward, about 10-20 s): about 30-40 s on an H200 (the
2026-12-04 run reached FlexAttention's backward in 21 s). Each contender is printed and the partial
JSON rewritten as soon as it is measured (harness.Record). ``--quick`` on CUDA: T=4096, decode 8 x 1024.
"""

from __future__ import annotations

import importlib.util
import math
import os

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from harness import Record, bench_argparser, measure
from vt_core.kernels.attention import (
    packed_attention,
    packed_attention_torch,
    paged_decode_attention,
    paged_decode_attention_torch,
)

# GB/s of HBM by GPU name fragment (vendor figures), for the decode bandwidth fraction.
HBM_GBPS = {"H200": 4800.0, "H100 SXM": 3350.0, "H100 PCIe": 2000.0, "H100": 3350.0, "A100-SXM4-80GB": 2039.0,
            "A100": 1555.0, "L40S": 864.0}


def document_lengths(total: int, lo: int, hi: int, seed: int = 0) -> list[int]:
    """Lengths drawn uniformly in [lo, hi] until they sum to ``total`` (the last one cut to fit)."""
    gen = torch.Generator().manual_seed(seed)
    lens: list[int] = []
    while sum(lens) < total:
        lens.append(min(int(torch.randint(lo, hi + 1, (1,), generator=gen)), total - sum(lens)))
    return lens


def causal_flops(lens: list[int], heads: int, d: int) -> float:
    """Forward FLOPs of causal attention per document (QK^T and PV, half the square), summed."""
    return sum(2.0 * 2.0 * heads * d * n * (n + 1) / 2 for n in lens)


def make_inputs(lens, heads, kv_heads, d, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    T = sum(lens)
    q, k, v = (torch.randn(T, h, d, generator=gen).to(device=device, dtype=dtype) for h in (heads, kv_heads, kv_heads))
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=device)
    return q, k, v, cu


def sdpa_per_document(cu, rep, backend):
    """SDPA (restricted to ``backend``) called once per document, K/V expanded for GQA inside the call."""
    bounds = list(zip(cu[:-1].tolist(), cu[1:].tolist()))

    def run(q, k, v):
        outs = []
        with torch.nn.attention.sdpa_kernel(backend):
            for s, e in bounds:
                outs.append(F.scaled_dot_product_attention(
                    q[s:e].transpose(0, 1)[None], k[s:e].transpose(0, 1)[None].repeat_interleave(rep, 1),
                    v[s:e].transpose(0, 1)[None].repeat_interleave(rep, 1), is_causal=True)[0].transpose(0, 1))
        return torch.cat(outs)

    return run


def contenders(q, k, v, cu, lens, device):
    """name -> callable(q, k, v) -> o [T, H, d], all on the same packed inputs (setup done here)."""
    T, H, d = q.shape
    rep = H // k.shape[1]
    doc = torch.repeat_interleave(torch.arange(len(lens), device=device), torch.tensor(lens, device=device))

    def doc_causal(b, h, qi, ki):
        return (doc[qi] == doc[ki]) & (qi >= ki)

    block_mask = create_block_mask(doc_causal, 1, None, T, T, device=device)
    flex_c = torch.compile(flex_attention)

    def flex(fn):
        def run(q, k, v):
            o = fn(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], block_mask=block_mask,
                   enable_gqa=rep > 1)
            return o[0].transpose(0, 1)
        return run

    def ours(q, k, v):
        return packed_attention(q, k, v, cu, max(lens))

    runs = {"vt_" + ("triton" if q.is_cuda else "torch"): ours, "flex_compiled": flex(flex_c)}
    if q.is_cuda:
        sdpa_per_doc = sdpa_per_document(cu, rep, torch.nn.attention.SDPBackend.FLASH_ATTENTION)
        runs["sdpa_flash_per_doc"] = sdpa_per_doc
        if importlib.util.find_spec("flash_attn") is not None:
            from flash_attn import flash_attn_varlen_func

            runs["flash_attn_varlen"] = lambda q, k, v: flash_attn_varlen_func(
                q, k, v, cu, cu, max(lens), max(lens), causal=True)
    else:
        allowed = (doc[:, None] == doc[None, :]) & torch.ones(T, T, dtype=torch.bool).tril()

        def sdpa_dense(q, k, v):
            o = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1).repeat_interleave(rep, 0),
                                               v.transpose(0, 1).repeat_interleave(rep, 0), attn_mask=allowed)
            return o.transpose(0, 1)

        runs["sdpa_dense_mask"] = sdpa_dense
        runs["flex_eager"] = flex(flex_attention)
    return runs


def bench_packed(args, results, lens, heads, kv_heads, d, dtype, warmup, repeats):
    """Adds ``<contender>.forward`` / ``.fwd_bwd`` / ``.backward`` to ``results`` (a harness Record: each
    contender is printed and the partial JSON written as soon as it is measured). Returns the FLOPs."""
    device = args.device
    q, k, v, cu = make_inputs(lens, heads, kv_heads, d, dtype, device)
    ref = packed_attention_torch(q.double(), k.double(), v.double(), cu)
    flops = causal_flops(lens, heads, d)
    results.shapes["causal_fwd_flops"] = flops
    do = torch.randn_like(q)
    qg, kg, vg = (x.detach().clone().requires_grad_() for x in (q, k, v))
    for name, fn in contenders(q, k, v, cu, lens, device).items():
        results.running(name)
        with torch.no_grad():
            out = fn(q, k, v)
        err = (out.double() - ref).abs().max().item()
        del out

        def fwd():
            with torch.no_grad():
                return fn(q, k, v)

        def fwd_bwd():
            return torch.autograd.grad(fn(qg, kg, vg), (qg, kg, vg), do)

        parts = {"forward": lambda: measure(fwd, device=device, warmup=warmup, repeats=repeats)}
        if q.is_cuda or not name.startswith("flex"):  # FlexAttention has no backward on CPU
            parts["fwd_bwd"] = lambda: measure(fwd_bwd, device=device, warmup=warmup, repeats=repeats)
            # backward alone: a fresh forward graph per call (untimed setup), then one backward through it,
            # without retain_graph (a compiled function with donated buffers cannot be replayed backward)
            parts["backward"] = lambda: measure(lambda o: torch.autograd.grad(o, (qg, kg, vg), do), device=device,
                                                warmup=warmup, repeats=repeats, setup=lambda: fn(qg, kg, vg))
        for part, run in parts.items():
            try:
                figures = run()
            except Exception as exc:  # recorded, and the other contenders still run
                results[f"{name}.{part}"] = {"error": repr(exc)[:500], "max_abs_err": err}
                if q.is_cuda:
                    torch.cuda.empty_cache()
                continue
            figures["tflops"] = {"forward": 1.0, "backward": 2.5, "fwd_bwd": 3.5}[part] * flops / (
                figures["median_ms"] * 1e-3) / 1e12
            results[f"{name}.{part}"] = {**figures, "max_abs_err": err}
    if dtype != torch.float32:
        # torch's own error in this dtype, the yardstick for the others' max_abs_err
        results["torch_own_dtype_err"] = {
            "max_abs_err": (packed_attention_torch(q, k, v, cu).double() - ref).abs().max().item()}
    return flops


def bench_decode(args, results, batch, context, page, heads, kv_heads, d, dtype, warmup, repeats):
    device = args.device
    gen = torch.Generator().manual_seed(1)
    blocks_per_seq = context // page
    num_blocks = batch * blocks_per_seq
    block_table = torch.randperm(num_blocks, generator=gen).view(batch, blocks_per_seq).to(torch.int32).to(device)
    k_cache = torch.randn(num_blocks, page, kv_heads, d, generator=gen).to(device=device, dtype=dtype)
    v_cache = torch.randn(num_blocks, page, kv_heads, d, generator=gen).to(device=device, dtype=dtype)
    q = torch.randn(batch, heads, d, generator=gen).to(device=device, dtype=dtype)
    ctx = torch.full((batch,), context, dtype=torch.int32, device=device)
    ref = paged_decode_attention_torch(q.float(), k_cache.float(), v_cache.float(), block_table, ctx)
    kv_bytes = 2 * batch * context * kv_heads * d * k_cache.element_size()
    runs = {"vt_paged_decode": lambda: paged_decode_attention(q, k_cache, v_cache, block_table, ctx)}
    if device == "cuda":
        runs["torch_gather_reference"] = lambda: paged_decode_attention_torch(q, k_cache, v_cache, block_table, ctx)
    for name, fn in runs.items():
        results.running(f"decode.{name}")
        err = (fn().float() - ref).abs().max().item()
        res = measure(fn, device=device, warmup=warmup, repeats=repeats)
        res["max_abs_err"] = err
        res["kv_gbps"] = kv_bytes / (res["median_ms"] * 1e-3) / 1e9
        if device == "cuda":
            name_gpu = torch.cuda.get_device_name()
            peak = next((bw for key, bw in HBM_GBPS.items() if key in name_gpu), None)
            res["hbm_peak_gbps"] = peak
            res["hbm_fraction"] = res["kv_gbps"] / peak if peak else None
        results[f"decode.{name}"] = res


def main():
    parser = bench_argparser("attention")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    if args.device == "cpu":
        lens = [8, 40, 1, 15] if args.quick else [320, 704, 512, 512]
        heads, kv_heads, d, dtype = (2, 2, 16, torch.float32) if args.quick else (8, 8, 64, torch.float32)
        reps = (1, 2) if args.quick else (2, 10)
        decode_shape = {"batch": 4 if args.quick else 16, "context": 64 if args.quick else 1024, "page": 16}
        notes = ("CPU: vt_torch is packed_attention's CPU path (per-document SDPA). FlexAttention compiles on this "
                 "CPU (flex_compiled, first call excluded) and is also run eager (flex_eager, materialises scores). "
                 "FlexAttention has no backward on CPU (NotImplementedError in torch), so it is timed forward only. "
                 "BlockMask / dense mask built once outside the timed region. Decode: torch path only on CPU.")
    else:
        lens = document_lengths(4096 if args.quick else 32768, 256, 1024 if args.quick else 8192)
        heads, kv_heads, d, dtype = 16, 2, 128, torch.bfloat16
        reps = (5, 20)
        decode_shape = {"batch": 8 if args.quick else 64, "context": 1024 if args.quick else 4096, "page": 16}
        notes = ("CUDA bf16: TFLOP/s on block-diagonal causal FLOPs (backward counted as 2.5x forward). "
                 "flash_attn_varlen present only if flash-attn is installed. torch_own_dtype_err is the per-document "
                 "SDPA error in bf16 against fp64, the yardstick for each contender's max_abs_err.")
    notes += (" backward = one backward pass through a fresh forward graph per call (the forward untimed, no "
              "retain_graph; on CUDA timed by events around the backward after an L2 flush).")
    shapes = {"doc_lengths": lens, "T": sum(lens), "heads": heads, "kv_heads": kv_heads, "head_dim": d,
              "dtype": str(dtype), "decode": decode_shape, "softmax_scale": 1 / math.sqrt(d)}
    baseline = "vt_torch.forward" if args.device == "cpu" else "sdpa_flash_per_doc.fwd_bwd"
    results = Record("attention", args, shapes=shapes, baseline=baseline, notes=notes)
    bench_packed(args, results, lens, heads, kv_heads, d, dtype, *reps)
    bench_decode(args, results, *decode_shape.values(), heads, kv_heads, d, dtype, *reps)
    after = os.getloadavg()
    results.notes += (" Load average (1/5/15 min) before: "
                      f"{load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f}, "
                      f"after: {after[0]:.1f}/{after[1]:.1f}/{after[2]:.1f} on {os.cpu_count()} logical cores.")
    path = results.finish()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
