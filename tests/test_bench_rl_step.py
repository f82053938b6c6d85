"""bench/bench_rl_step.py --quick end to end (full Qwen vocabulary on a small body, CPU): one RL step split into
generation / reward wait / training, and the JSON record it writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_rl_step_quick_writes_a_consistent_record(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_rl_step.py"), "--device", "cpu", "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((tmp_path / "rl_step_cpu.json").read_text())
    shapes, r = record["shapes"], record["results"]["vt_core_rl_step"]
    assert shapes["model"] == "quick" and shapes["config"]["vocab_size"] == 151936
    assert shapes["rl_config"]["algo"]["share_prompts"] is True
    samples = shapes["prompts_per_step"] * shapes["group_size"]
    assert 0 < r["completion_tokens"] <= samples * shapes["new_tokens"]
    assert 50 * samples < r["prompt_tokens"] < 100 * samples  # code-task prompts are about 72 tokens
    assert r["gen_s"] > 0 and r["train_s"] > 0 and r["score_s"] >= 0
    assert r["gen_s"] + r["train_s"] <= r["step_s"] * 1.001
    tokens = r["prompt_tokens"] + r["completion_tokens"]
    assert abs(r["tokens_per_s"] - tokens / r["step_s"]) < 1e-3 * r["tokens_per_s"]
    assert len(r["steps"]) == 1 and "tokens/s per device" in proc.stdout
