"""bench/bench_losses.py: its GPU-only contenders built on CPU tensors (what a CPU machine can check of the
CUDA path: the contender set, and that naive_compiled computes the naive loss and gradients through
torch.compile(dynamic=True), one compilation for two token counts), and the --quick CPU record."""

import json
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import bench_losses  # noqa: E402


def _inputs(T):
    sh = bench_losses.SHAPES["quick"]
    return bench_losses.Inputs(T, sh["D"], sh["V"], 32, 4, torch.float32, "cpu")


def _loss_and_grads(x, fn):
    loss = fn()
    loss.backward()
    grads = (x.hidden.grad.clone(), x.weight.grad.clone())
    x.hidden.grad = x.weight.grad = None
    return loss.detach(), grads


def test_gpu_contenders_on_cpu_tensors():
    compiled = {"rl": torch.compile(bench_losses.logprobs_entropy, dynamic=True),
                "ce": torch.compile(bench_losses.ce_from_hidden, dynamic=True)}
    for T in (64, 96):  # two token counts: dynamic shapes, as the GPU run's 8192 and 32768
        x = _inputs(T)
        rl = bench_losses.rl_contenders(x, "cuda", compiled)
        ce = bench_losses.ce_contenders(x, "cuda", compiled)
        assert set(rl) == {"vt", "naive", "liger_grpo", "liger_grpo_compiled", "naive_compiled", "liger_triton_grpo"}
        assert set(ce) == {"vt", "naive", "liger_flce", "naive_compiled"}
        for fns in (rl, ce):
            ref_loss, ref_grads = _loss_and_grads(x, fns["naive"])
            loss, grads = _loss_and_grads(x, fns["naive_compiled"])
            torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
            for got, want in zip(grads, ref_grads):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    without = bench_losses.rl_contenders(_inputs(64), "cuda", compiled, liger=False)
    assert set(without) == {"vt", "naive", "naive_compiled"}
    assert set(bench_losses.rl_contenders(_inputs(64), "cpu", {})) == {"vt", "naive", "liger_grpo",
                                                                       "liger_grpo_compiled"}


def test_bench_losses_quick_record(tmp_path):
    contenders = ["vt", "naive"]
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_losses.py"), "--device", "cpu", "--quick",
                           "--contenders", *contenders, "--warmup", "0", "--repeats", "1", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((tmp_path / "losses_vt_naive_cpu.json").read_text())
    assert record["partial"] is False
    assert set(record["results"]) == {f"{op}/T=96/{c}" for op in ("rl", "ce") for c in contenders}
    assert "[losses] rl/T=96/vt:" in proc.stdout  # each contender printed as it is recorded
