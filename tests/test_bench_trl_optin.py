"""bench/bench_trl.py --optin --quick end to end: TRL stock, TRL + Liger (recorded as not run where liger's Triton
kernels cannot run, e.g. on CPU) and TRL + vt_core's opt-in on the same fixed GRPO and SFT batches."""

import json
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def test_bench_trl_optin_quick_writes_a_consistent_record(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_trl.py"), "--device", "cpu", "--quick",
                           "--optin", "--out", str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((tmp_path / "trl_optin_cpu.json").read_text())
    assert record["name"] == "trl_optin" and not record["partial"]
    results, not_run = record["results"], record["shapes"]["not_run"]
    for kind in ("grpo", "sft"):
        for name in ("trl", "trl_vt_core"):
            figures = results[f"{kind}_{name}"]
            assert figures["repeats"] == 1 and figures["median_ms"] > 0 and figures["peak_mem_mb"] > 0
        ours = results[f"{kind}_trl_vt_core"]
        unit = "steps_per_s" if kind == "grpo" else "tokens_per_s"
        assert ours[f"{unit}_vs_trl"] == ours[unit] / results[f"{kind}_trl"][unit]
        liger = f"{kind}_trl_liger"
        assert (liger in results) != (liger in not_run)
        if not torch.cuda.is_available():
            assert liger in not_run and not_run[liger]
    sft = results["sft_trl"]
    tokens = sft["tokens_per_s"] * sft["median_ms"] / 1e3
    assert abs(tokens - record["shapes"]["sft"]["tokens"]) < 1e-6 * sft["tokens_per_s"]
