"""bench/bench_trl.py --quick end to end: vt_core's RL and SFT steps against TRL's GRPOTrainer and SFTTrainer
(TRL runs in a helper thread, one optimizer step per call); checks the JSON record it writes."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_trl_quick_writes_a_consistent_record(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_trl.py"), "--device", "cpu", "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((tmp_path / "trl_cpu.json").read_text())
    assert record["name"] == "trl" and record["device"]["kind"] == "cpu"
    assert "trl" in record["versions"] and "transformers" in record["versions"]
    shapes, results = record["shapes"], record["results"]
    assert shapes["threads"] == {"OMP_NUM_THREADS": "1", "torch_main": 1}
    assert shapes["rl"]["trl_thread_torch_threads"] == 1
    assert shapes["sft"]["trl_thread_torch_threads"] == {"trl": 1, "trl_padded": 1}
    assert shapes["rl"]["trl_checkpointing"] is False and shapes["sft"]["trl_checkpointing"] is False
    assert set(results) == {"rl_vt_core", "rl_trl", "sft_vt_core", "sft_trl", "sft_trl_padded"}
    for figures in results.values():
        assert figures["repeats"] == 1
        assert figures["median_ms"] > 0 and figures["peak_mem_mb"] > 0  # TRL's memory is profiled in its thread
    for name in ("vt_core", "trl"):
        rl = results[f"rl_{name}"]
        assert abs(rl["steps_per_s"] - 1e3 / rl["median_ms"]) < 1e-9 * rl["steps_per_s"]
        assert abs(rl["steps_per_cpu_s"] - 1e3 / rl["cpu_time_median_ms"]) < 1e-9 * rl["steps_per_cpu_s"]
    for name in ("vt_core", "trl", "trl_padded"):
        sft = results[f"sft_{name}"]
        # every example of a step is one SFT sequence of about mean_example_tokens tokens
        expected = shapes["sft"]["examples_per_step"] * shapes["sft"]["mean_example_tokens"]
        assert 0.5 * expected < sft["tokens_per_step_mean"] < 1.5 * expected
        tokens_per_s = sft["tokens_per_step_mean"] * 1e3 / sft["median_ms"]
        assert abs(sft["tokens_per_s"] - tokens_per_s) < 1e-6 * tokens_per_s
    vt_rl = results["rl_vt_core"]
    for unit in ("steps_per_s", "steps_per_cpu_s"):
        assert vt_rl[f"{unit}_vs_trl"] == vt_rl[unit] / results["rl_trl"][unit]
    assert 0 < vt_rl["response_len_median"] <= shapes["rl"]["max_new_tokens"]
    assert 0 < vt_rl["gen_s_median"] and 0 < vt_rl["train_s_median"]
    trl_rl = results["rl_trl"]
    assert 0 <= trl_rl["sandbox_runs_median"] <= shapes["rl"]["samples_per_step"]
    assert 0 < trl_rl["gen_score_s_median"] < trl_rl["median_ms"] / 1e3
    vt_sft = results["sft_vt_core"]
    for name in ("trl", "trl_padded"):
        for unit in ("tokens_per_s", "tokens_per_cpu_s"):
            assert vt_sft[f"{unit}_vs_{name}"] == vt_sft[unit] / results[f"sft_{name}"][unit]
