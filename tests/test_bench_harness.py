"""bench/harness.py: CPU peak memory on known allocation patterns, timing figures, the JSON record,
and bench/gpu_check.sh in its --dry-run mode."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from harness import bench_argparser, cpu_peak_memory_mb, measure, measure_many, write_record  # noqa: E402

MIB = 2**20  # elements: a float32 tensor of MIB elements is 4 MiB


def _staircase():
    """Live bytes: 4 MiB, 12 MiB (peak), 8 MiB, 12 MiB; returns a 4 MiB tensor."""
    a = torch.empty(MIB)
    b = torch.empty(2 * MIB)
    del a
    c = torch.empty(MIB)
    del b
    d = torch.empty(2 * MIB)
    del d
    return c


def test_cpu_peak_memory_of_a_known_pattern():
    assert cpu_peak_memory_mb(_staircase) == pytest.approx(12.0, abs=0.01)


def test_cpu_peak_memory_ignores_what_was_allocated_before():
    held = torch.ones(2 * MIB)  # 8 MiB alive before and during the call, not counted

    def grow():
        return held + 1.0  # one 8 MiB result

    assert cpu_peak_memory_mb(grow) == pytest.approx(8.0, abs=0.01)


def test_cpu_peak_memory_sees_autograd_buffers():
    x = torch.randn(256, 256, requires_grad=True)

    def fwd_bwd():
        (x.exp() * 2.0).sum().backward()  # exp output saved for backward: at least 2 live 256 KiB buffers

    assert cpu_peak_memory_mb(fwd_bwd) >= 0.5


def test_measure_cpu_figures():
    calls = []
    result = measure(lambda: calls.append(1) or _staircase(), device="cpu", warmup=2, repeats=5)
    assert len(calls) == 2 + 5 + 1  # warm-up, timed, one profiled call for memory
    assert 0 < result["min_ms"] <= result["p20_ms"] <= result["median_ms"] <= result["p80_ms"]
    assert result["peak_mem_mb"] == pytest.approx(12.0, abs=0.01)
    assert result["repeats"] == 5 and result["timer"] == "perf_counter"


def test_measure_many_interleaves_contenders():
    order = []
    results = measure_many(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b"), "c": lambda: order.append("c")},
        device="cpu", warmup=1, repeats=3,
    )
    # warm-up round, three rotated timed rounds, then one profiled call each for memory
    assert "".join(order) == "abc" + "abc" + "bca" + "cab" + "abc"
    assert set(results) == {"a", "b", "c"}
    for figures in results.values():
        assert figures["repeats"] == 3 and figures["cpu_time_median_ms"] >= 0
        assert figures["peak_mem_mb"] == pytest.approx(0.0, abs=0.01)


def test_measure_rejects_bad_arguments():
    with pytest.raises(ValueError, match="device"):
        measure(lambda: None, device="tpu")
    with pytest.raises(ValueError, match="repeats"):
        measure(lambda: None, device="cpu", repeats=0)


def test_argparser_defaults_and_env(monkeypatch, tmp_path):
    monkeypatch.setenv("VT_BENCH_OUT", str(tmp_path))
    args = bench_argparser("x").parse_args([])
    assert args.out == tmp_path and args.quick is False and args.bench_name == "x"
    assert args.device == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.delenv("VT_BENCH_OUT")
    args = bench_argparser("x").parse_args(["--device", "cpu", "--quick"])
    assert args.out == REPO / "bench" / "results" and args.quick and args.device == "cpu"


def test_write_record(tmp_path):
    args = bench_argparser("probe").parse_args(["--device", "cpu", "--out", str(tmp_path / "deep")])
    results = {
        "ref": {"median_ms": 4.0, "peak_mem_mb": 10.0, "tokens_per_s": 100.0, "repeats": 5},
        "ours": {"median_ms": 1.0, "peak_mem_mb": 0.0, "tokens_per_s": 400.0, "repeats": 5},
    }
    path = write_record("probe", args, shapes={"T": 67}, results=results, baseline="ref", notes="n")
    assert path == tmp_path / "deep" / "probe_cpu.json"
    record = json.loads(path.read_text())
    assert len(record["commit"]) == 40 and isinstance(record["dirty"], bool)
    assert record["timestamp_utc"].endswith("+00:00")
    assert record["device"]["kind"] == "cpu" and record["device"]["cpu"]["logical_cores"] >= 1
    assert {"python", "torch", "triton", "numpy"} <= set(record["versions"])
    assert record["command"].startswith("python ")
    assert record["shapes"] == {"T": 67} and record["results"] == results and record["notes"] == "n"
    assert record["ratios"]["ours"] == {"median_ms": 0.25, "peak_mem_mb": 0.0, "tokens_per_s": 4.0}
    assert record["ratios"]["ref"]["median_ms"] == 1.0
    ref_zero = {"ref": {"peak_mem_mb": 0.0}, "ours": {"peak_mem_mb": 3.0}}
    record = json.loads(write_record("probe", args, {}, ref_zero, baseline="ref").read_text())
    assert record["ratios"]["ours"] == {"peak_mem_mb": None}
    with pytest.raises(ValueError, match="baseline"):
        write_record("probe", args, {}, results, baseline="missing")


def test_gpu_check_dry_run(tmp_path):
    env = {**os.environ, "VT_BENCH_OUT": str(tmp_path)}
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry-run"],
        capture_output=True, text=True, env=env, timeout=60, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "gpu_check_summary.json").read_text())
    assert summary["mode"] == "dry-run" and summary["failed"] == 0
    names = [step["name"] for step in summary["steps"]]
    assert names[0] == "pytest_gpu"
    assert "bench_model" in names
    assert all(step["status"] == "dry-run" for step in summary["steps"])
