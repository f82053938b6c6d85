"""Fused linear losses (forward + backward) against logits-building versions and liger-kernel.

    python bench/bench_losses.py [--device cpu|cuda] [--out DIR] [--quick] [--tokens 1024 4096] [--ops rl ce]
                                 [--contenders vt naive ...] [--warmup 1] [--repeats 3]

The record goes to <out>/losses_<device>.json; --tokens and --contenders add themselves to the name
(losses_T1024_vt_naive_cpu.json).

Every contender gets the same inputs: hidden [T, D] and an LM head [V, D] (leaves with requires_grad),
targets [T], packed sequences of ``--seq-len`` tokens whose first ``--prompt-len`` tokens are masked
(the prompt), one advantage per sequence. One step = loss forward + backward into both gradients.

Contenders, ``rl`` (GRPO: PPO clip 0.2/0.2, on-policy ratio, no KL, token-mean over completion tokens):

- ``vt``: ``vt_core.kernels.linear_rl_loss`` (VT_BACKEND=auto: the chunked torch path on CPU, Triton on CUDA).
- ``naive``: full logits [T, V] in fp32 -> log_softmax -> gather -> the same loss (``rl_loss_from_logprobs``).
- ``liger_grpo`` / ``liger_grpo_compiled``: liger-kernel's ``LigerFusedLinearGRPOLoss`` (compiled=False /
  True; loss_type "bnpo" = token mean over the batch's completion tokens), on the [B, L, D] view of hidden.
- GPU only: ``naive_compiled`` (``naive`` with its logits -> log-probs / entropy part through
  ``torch.compile(dynamic=True)``: one compilation serves every T; the loss on the [T] log-probs stays eager,
  its argument checks read tensors), ``liger_triton_grpo`` (bf16 logits [B, L, V] from one matmul, then
  liger's Triton ``triton_grpo_loss``; it scores L-1 tokens per sequence), ``gemm`` (bare LM-head matmul
  forward + backward with a random upstream gradient).

Contenders, ``ce`` (mean next-token cross-entropy over completion tokens, ignore_index -100):
``vt`` (``linear_cross_entropy``), ``naive`` (fp32 logits + F.cross_entropy), GPU only: ``liger_flce``
(``LigerFusedLinearCrossEntropyLoss``; Triton-only, so it cannot run on CPU) and ``naive_compiled``
(the whole naive CE through ``torch.compile(dynamic=True)``).
(The first GPU run also had ``vt_torch_compiled``, torch.compile of vt's chunked torch reference: dynamo
unrolls its Python loop over 128-token chunks inside an autograd.Function, and the compilation did not end
within the step's 80 s. It measured nothing worth the time and is gone.)

GPU shape (``--device cuda``, what gpu_check.sh runs): D=2048 (Qwen2.5-3B's hidden size), V=151936, bf16,
T = 8192 (the main job's micro-batch, ``algo.micro_tokens``) and 32768, sequences of 1024 tokens with
64-token prompts. Per T: rl with 7 contenders and ce with 4, each ``do_bench`` (about 8 calls of at most
~0.5 s at T=32768), plus three compilations (liger's compiled GRPO chunk, naive_compiled for rl and ce,
each once for both T thanks to dynamic shapes; ~15-25 s each). About 80-110 s on an H200 (cap 130 s). Each contender
is printed and the partial JSON rewritten as soon as it is measured (harness.Record); on the GPU a
contender is skipped (and recorded as skipped) when less time is left of gpu_check's step
(``VT_BENCH_DEADLINE``) than it may need, so the bench ends inside its cap with what it measured.

On CPU the contenders of one (T, op) group are timed together, round-robin (``measure_many``): round r
calls each contender once, back to back, so load from other work on the machine hits them alike; for vt
the figures ``paired_time_vs_<ref>`` (wall clock) and ``paired_cpu_time_vs_<ref>`` (process CPU time) are
medians over rounds of vt's time / the reference's time in the same round (printed too). On a loaded
machine the CPU-time figures (``cpu_time_median_ms``, ``cpu_time_vs_<ref>``) are the ones to compare: wall
clock then mostly measures how long the process waited for a core.

Figures per contender: time (harness quantiles), ``peak_mem_mb`` (allocated during the step, gradients
included) and ``extra_mem_mb`` = peak minus the two gradients (memory beyond inputs and their grads),
``tflops_8TDV`` = 8*T*D*V / time (the fused-loss convention: logits forward, recompute, two grad GEMMs;
for ``gemm`` the figure ``tflops`` counts its real 6*T*D*V). Per T, ``vs_naive`` and ``vs_liger`` ratios.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import torch

from harness import Record, bench_argparser, measure, measure_many, seconds_left
from vt_core.kernels import RLLossConfig, linear_cross_entropy, linear_rl_loss, rl_loss_from_logprobs
from vt_core.kernels.cross_entropy import linear_cross_entropy_naive
from vt_core.kernels.linear_logprobs import linear_logprobs_naive

SHAPES = {
    "cpu": dict(D=1024, V=151936, tokens=(1024, 4096), dtype=torch.float32, seq_len=256, prompt_len=32),
    "cuda": dict(D=2048, V=151936, tokens=(8192, 32768), dtype=torch.bfloat16, seq_len=1024, prompt_len=64),
    "quick": dict(D=64, V=4099, tokens=(96,), dtype=torch.float32, seq_len=32, prompt_len=4),
}
NAIVE_BYTES_PER_LOGIT = 5 * 4  # fp32 logits, log-probs, their two gradients and one temporary alive at once


class Inputs:
    """One set of inputs shared by every contender at one T."""

    def __init__(self, T: int, D: int, V: int, seq_len: int, prompt_len: int, dtype, device: str, seed: int = 0):
        g = torch.Generator(device="cpu").manual_seed(seed)
        self.T, self.D, self.V, self.B, self.L = T, D, V, T // seq_len, seq_len
        self.hidden = torch.randn(T, D, generator=g).to(device, dtype).requires_grad_()
        self.weight = (torch.randn(V, D, generator=g) / math.sqrt(D)).to(device, dtype).requires_grad_()
        self.targets = torch.randint(0, V, (T,), generator=g).to(device)
        self.mask2d = torch.ones(self.B, seq_len, dtype=torch.bool)
        self.mask2d[:, :prompt_len] = False
        self.mask2d = self.mask2d.to(device)
        self.loss_mask = self.mask2d.reshape(T)
        self.seq_adv = torch.randn(self.B, generator=g).to(device)
        self.advantages = self.seq_adv.repeat_interleave(seq_len)
        self.cu_seqlens = torch.arange(0, T + 1, seq_len, dtype=torch.int32, device=device)
        self.ce_targets = torch.where(self.loss_mask, self.targets, -100)
        self.grad_mb = (self.hidden.numel() + self.weight.numel()) * self.hidden.element_size() / 2**20

    def step(self, loss_fn):
        """Forward + backward of ``loss_fn()`` (a loss, or (output, upstream gradient)); the gradients are
        dropped at the end so every call starts equal."""

        def run():
            out = loss_fn()
            if isinstance(out, tuple):
                out[0].backward(out[1])
            else:
                out.backward()
            self.hidden.grad = None
            self.weight.grad = None

        return run


def logprobs_entropy(hidden, weight, targets):
    """The linear_logprobs oracle: full fp32 logits [T, V] -> target log-probs (differentiable) and entropy
    (detached here, so its graph and its [T, V] saved tensor go before the loss runs)."""
    logp, entropy = linear_logprobs_naive(hidden, weight, targets, return_entropy=True)
    return logp, entropy.detach()


def naive_rl(x: Inputs, cfg: RLLossConfig, logprobs_fn=logprobs_entropy):
    logp, entropy = logprobs_fn(x.hidden, x.weight, x.targets)
    loss, _ = rl_loss_from_logprobs(logp, entropy, x.advantages, x.loss_mask, x.cu_seqlens, None, None, None, cfg)
    return loss


def ce_from_hidden(hidden, weight, targets):
    """The linear_cross_entropy oracle: fp32 logits [T, V] + F.cross_entropy, mean over targets != -100."""
    return linear_cross_entropy_naive(hidden, weight, targets)


def naive_ce(x: Inputs, ce_fn=ce_from_hidden):
    return ce_fn(x.hidden, x.weight, x.ce_targets)


def liger_missing() -> str | None:
    """Why liger-kernel cannot be imported (its contenders are then left out and the notes say so), or None."""
    try:
        import liger_kernel  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install
        return repr(exc)[:300]
    return None


def rl_contenders(x: Inputs, device: str, compiled: dict, liger: bool = True) -> dict:
    """name -> loss function of the rl op; ``compiled``: {"rl": torch.compile'd logprobs_entropy} on CUDA."""
    cfg = RLLossConfig()
    fns = {
        "vt": lambda: linear_rl_loss(x.hidden, x.weight, x.targets, x.advantages, x.loss_mask, x.cu_seqlens,
                                     config=cfg)[0],
        "naive": lambda: naive_rl(x, cfg),
    }
    if liger:
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

        for name, use_compile in (("liger_grpo", False), ("liger_grpo_compiled", True)):
            loss = LigerFusedLinearGRPOLoss(beta=0.0, compiled=use_compile, use_ref_model=False, loss_type="bnpo",
                                            epsilon_low=0.2, epsilon_high=0.2, temperature=1.0)
            fns[name] = (lambda loss=loss: loss(x.hidden.view(x.B, x.L, x.D), x.weight,
                                                x.targets.view(x.B, x.L), x.mask2d, x.seq_adv)[0])
    if device == "cuda":
        fns["naive_compiled"] = lambda: naive_rl(x, cfg, compiled["rl"])
    if device == "cuda" and liger:
        from liger_kernel.transformers.grpo_loss import triton_grpo_loss

        fns["liger_triton_grpo"] = lambda: triton_grpo_loss(
            (x.hidden.view(x.B, x.L, x.D) @ x.weight.t()), None, None, x.targets.view(x.B, x.L)[:, 1:].contiguous(),
            x.seq_adv, x.mask2d[:, 1:].contiguous(), temperature=1.0, beta=0.0, eps_low=0.2, eps_high=0.2,
            loss_type="bnpo", reduce=True)[0]
    return fns


def ce_contenders(x: Inputs, device: str, compiled: dict, liger: bool = True) -> dict:
    """name -> loss function of the ce op; ``compiled``: {"ce": torch.compile'd ce_from_hidden} on CUDA."""
    fns = {
        "vt": lambda: linear_cross_entropy(x.hidden, x.weight, x.ce_targets),
        "naive": lambda: naive_ce(x),
    }
    if device == "cuda" and liger:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        flce = LigerFusedLinearCrossEntropyLoss(ignore_index=-100)
        fns["liger_flce"] = lambda: flce(x.weight, x.hidden, x.ce_targets)
    if device == "cuda":
        fns["naive_compiled"] = lambda: naive_ce(x, compiled["ce"])
    return fns


def _available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("MemAvailable missing from /proc/meminfo")


def _fits(name: str, x: Inputs, device: str, notes: list[str]) -> bool:
    """Naive versions build [T, V] fp32 tensors: on CPU skip them (and say so) when RAM cannot hold them."""
    if name != "naive" or device != "cpu":
        return True
    need_mb = x.T * x.V * NAIVE_BYTES_PER_LOGIT / 2**20
    free_mb = _available_mb()
    if need_mb < 0.8 * free_mb:
        return True
    notes.append(f"T={x.T}: naive skipped, it needs ~{need_mb:.0f} MiB and {free_mb:.0f} MiB were available")
    return False


def _derived(fig: dict, x: Inputs, name: str) -> dict:
    seconds = fig["median_ms"] / 1e3
    fig["extra_mem_mb"] = fig["peak_mem_mb"] - x.grad_mb
    fig["tokens_per_s"] = x.T / seconds
    if name == "gemm":
        fig["tflops"] = 6 * x.T * x.D * x.V / seconds / 1e12
    else:
        fig["tflops_8TDV"] = 8 * x.T * x.D * x.V / seconds / 1e12
    return fig


RATIO_REFS = {"naive": "vs_naive", "liger_grpo": "vs_liger", "liger_grpo_compiled": "vs_liger_compiled",
              "liger_flce": "vs_liger"}


def _ratios(group: dict) -> None:
    for ref, tag in RATIO_REFS.items():
        if ref not in group or "median_ms" not in group[ref]:
            continue
        for fig in group.values():
            if "median_ms" in fig:
                fig[f"time_{tag}"] = fig["median_ms"] / group[ref]["median_ms"]
                if "cpu_time_median_ms" in fig:
                    fig[f"cpu_time_{tag}"] = fig["cpu_time_median_ms"] / group[ref]["cpu_time_median_ms"]
                fig[f"extra_mem_{tag}"] = fig["extra_mem_mb"] / group[ref]["extra_mem_mb"]


def _measure_group_cpu(fns: dict, x: Inputs, args, add) -> dict:
    """All contenders round-robin in one ``measure_many`` call; each call's wall and process CPU time are also
    kept, so that vt's times can be divided by a reference's times in the same round. ``add(name, figures)``
    takes each contender's figures as soon as they exist."""
    calls: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}

    def timed(name, run):
        def call():
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            calls[name].append((time.perf_counter() - start, time.process_time() - start_cpu))
        return call

    group = {}

    def on_result(name, fig):
        group[name] = _derived(fig, x, name)
        add(name, group[name])

    measure_many({name: timed(name, x.step(fn)) for name, fn in fns.items()}, device="cpu",
                 warmup=args.warmup, repeats=args.repeats, on_result=on_result)
    rounds = slice(args.warmup, args.warmup + args.repeats)  # after the warm-up calls, before the memory call
    for ref, tag in RATIO_REFS.items():
        if "vt" in calls and ref in calls:
            for i, kind in enumerate(("time", "cpu_time")):
                pairs = [a[i] / b[i] for a, b in zip(calls["vt"][rounds], calls[ref][rounds])]
                group["vt"][f"paired_{kind}_{tag}"] = statistics.median(pairs)
                group["vt"][f"paired_{kind}_rounds_{tag}"] = pairs
    return group


COMPILED = ("liger_grpo_compiled", "naive_compiled")


def _measure_group_cuda(fns: dict, x: Inputs, args, add, compiled_seen: set) -> dict:
    """Each contender in turn (do_bench), handed to ``add`` as soon as it is measured. A contender is skipped
    when less time is left of the step (``VT_BENCH_DEADLINE``) than it may need: a few seconds per 8192
    tokens, plus ~35 s for a compiled contender's first call (its compilation)."""
    group = {}
    for name, fn in fns.items():
        need = 4.0 + 3.0 * x.T / 8192 + (35.0 if name in COMPILED and name not in compiled_seen else 0.0)
        left = seconds_left()
        if left < need:
            group[name] = {"skipped": f"{left:.0f} s left of the step, it may need {need:.0f} s"}
        else:
            try:
                group[name] = _derived(measure(x.step(fn), device="cuda"), x, name)
                compiled_seen.add(name)
            except torch.cuda.OutOfMemoryError:
                group[name] = {"oom": True}
            except Exception as exc:  # recorded; the other contenders still run
                group[name] = {"error": repr(exc)[:500]}
        if "median_ms" not in group[name]:
            torch.cuda.empty_cache()
        add(name, group[name])
    return group


def main():
    parser = bench_argparser("losses")
    parser.add_argument("--tokens", type=int, nargs="+", help="token counts T (default: per device)")
    parser.add_argument("--ops", nargs="+", choices=("rl", "ce"), default=["rl", "ce"])
    parser.add_argument("--contenders", nargs="+", help="only these contenders (default: all)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per contender on CPU")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per contender on CPU")
    args = parser.parse_args()
    shape = SHAPES["quick" if args.quick else args.device]
    device = args.device
    tokens = args.tokens or shape["tokens"]
    torch.manual_seed(0)
    compiled = ({"rl": torch.compile(logprobs_entropy, dynamic=True), "ce": torch.compile(ce_from_hidden, dynamic=True)}
                if device == "cuda" else {})
    compiled_seen: set = set()
    notes: list[str] = []
    record_name = "losses" + ("" if args.tokens is None else "_T" + "_".join(map(str, tokens)))
    record_name += "" if args.contenders is None else "_" + "_".join(args.contenders)
    shapes = {"T": list(tokens), "D": shape["D"], "V": shape["V"], "dtype": str(shape["dtype"]),
              "seq_len": shape["seq_len"], "prompt_len": shape["prompt_len"], "ops": args.ops}
    if device == "cpu":
        notes.append("CPU timings are noisy when other work shares the cores (see load_average); "
                     "compare cpu_time_median_ms / cpu_time_vs_* and the paired ratios.")
        notes.append("liger_flce (LigerFusedLinearCrossEntropyLoss) is Triton-only and cannot run on CPU.")
    missing = liger_missing()
    if missing:
        notes.append(f"liger-kernel cannot be imported ({missing}): its contenders are left out.")
    results = Record(record_name, args, shapes=shapes, notes=" ".join(notes), prefix="[losses]")

    for T in tokens:
        x = Inputs(T, shape["D"], shape["V"], shape["seq_len"], shape["prompt_len"], shape["dtype"], device)
        for op in args.ops:
            fns = (rl_contenders if op == "rl" else ce_contenders)(x, device, compiled, liger=missing is None)
            if device == "cuda" and op == "rl":
                grad_logits = torch.randn(T, x.V, device=device, dtype=x.hidden.dtype)
                fns["gemm"] = lambda x=x: (x.hidden @ x.weight.t(), grad_logits)
            fns = {name: fn for name, fn in fns.items()
                   if (not args.contenders or name in args.contenders) and _fits(name, x, device, notes)}
            results.notes = " ".join(notes)
            results.running(f"T={T} {op}: {', '.join(fns)}")

            def add(name, fig, op=op, T=T):
                results[f"{op}/T={T}/{name}"] = fig

            group = (_measure_group_cpu(fns, x, args, add) if device == "cpu"
                     else _measure_group_cuda(fns, x, args, add, compiled_seen))
            _ratios(group)
            results.write(partial=True)  # with the ratios and paired figures added to the group's entries
            for ref, tag in RATIO_REFS.items():
                for kind in ("time", "cpu_time"):
                    if ref in group and f"paired_{kind}_{tag}" in group.get("vt", {}):
                        rounds = [round(r, 3) for r in group["vt"][f"paired_{kind}_rounds_{tag}"]]
                        print(f"T={T} {op:>2} vt / {ref} {kind} paired over rounds: median "
                              f"{group['vt'][f'paired_{kind}_{tag}']:.3f}  rounds {rounds}", flush=True)
            if device == "cuda":
                del fns, group
                grad_logits = None
                torch.cuda.empty_cache()
        del x
    results.notes = " ".join(notes)
    path = results.finish()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
