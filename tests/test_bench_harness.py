"""bench/harness.py: CPU peak memory on known allocation patterns, timing figures (also with an untimed
setup), the JSON record and the live Record (partial JSON after every contender, and on SIGTERM), and
bench/gpu_check.sh in its --dry-run and --cpu-smoke modes (wheels from a carried folder, packing)."""

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from harness import (  # noqa: E402
    Record,
    bench_argparser,
    cpu_peak_memory_mb,
    measure,
    measure_many,
    seconds_left,
    summary_line,
    write_record,
)

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


def test_measure_with_setup_times_only_fn():
    made, used = [], []

    def setup():
        time.sleep(0.03)  # untimed
        made.append(1)
        return torch.ones(MIB)

    result = measure(lambda t: used.append(t) or (t * 2.0), device="cpu", warmup=1, repeats=4, setup=setup)
    assert len(made) == len(used) == 1 + 4 + 1  # warm-up, timed, one profiled call for memory
    assert result["median_ms"] < 25 and result["repeats"] == 4 and "setup excluded" in result["timer"]
    assert result["peak_mem_mb"] == pytest.approx(4.0, abs=0.01)  # fn's result only, not setup's tensor


def test_measure_many_reports_each_contender():
    seen = []
    measure_many({"a": lambda: None, "b": lambda: None}, device="cpu", warmup=0, repeats=1,
                 on_result=lambda name, figures: seen.append((name, figures["repeats"])))
    assert seen == [("a", 1), ("b", 1)]


def test_seconds_left(monkeypatch):
    monkeypatch.delenv("VT_BENCH_DEADLINE", raising=False)
    assert seconds_left() == float("inf") and seconds_left(7.0) == 7.0
    monkeypatch.setenv("VT_BENCH_DEADLINE", str(int(time.time()) + 100))
    assert 95 < seconds_left() <= 100


def test_summary_line():
    line = summary_line("x", {"median_ms": 2.0, "p20_ms": 1.0, "p80_ms": 3.0, "min_ms": 0.5, "timer": "t",
                              "tokens_per_s": 1234.5, "steps": [1, 2]})
    assert line == "x: 2 ms (1..3)  tokens_per_s 1234"
    assert summary_line("y", {"error": "boom"}) == "y: error boom"


def test_record_writes_partial_json_after_every_contender(tmp_path, capsys):
    args = bench_argparser("probe").parse_args(["--device", "cpu", "--out", str(tmp_path)])
    rec = Record("probe", args, shapes={"T": 1}, baseline="ref", notes="n")
    try:
        rec["ours"] = {"median_ms": 1.0}
        path = tmp_path / "probe_cpu.json"
        record = json.loads(path.read_text())
        assert record["partial"] is True and record["results"] == {"ours": {"median_ms": 1.0}}
        assert record["ratios"] is None and "PARTIAL" in record["notes"]  # the baseline is not measured yet
        rec.running("ref")
        rec["ref"] = {"median_ms": 4.0}
        assert json.loads(path.read_text())["results"]["ref"] == {"median_ms": 4.0}
        rec.shapes["late"] = 2
        assert rec.finish() == path
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    record = json.loads(path.read_text())
    assert record["partial"] is False and record["notes"] == "n" and record["shapes"] == {"T": 1, "late": 2}
    assert record["ratios"]["ours"] == {"median_ms": 0.25}
    out = capsys.readouterr().out
    assert "[probe] ours: 1 ms" in out and "[probe] ... ref" in out and "[probe] ref: 4 ms" in out


def test_record_on_sigterm_writes_what_it_has(tmp_path):
    """gpu_check.sh's timeout sends SIGTERM: the bench leaves its partial record, naming what was running."""
    script = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(REPO / 'bench')!r})\n"
        "from harness import Record, bench_argparser\n"
        f"args = bench_argparser('probe').parse_args(['--device', 'cpu', '--out', {str(tmp_path)!r}])\n"
        "rec = Record('probe', args, baseline='b')\n"
        "rec['a'] = {'median_ms': 1.0}\n"
        "rec.running('b')\n"
        "print('READY', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("READY"):
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
    finally:
        proc.kill()
    record = json.loads((tmp_path / "probe_cpu.json").read_text())
    assert record["partial"] is True and record["results"] == {"a": {"median_ms": 1.0}}
    assert "while running 'b'" in record["notes"]


def _gpu_check(*flags, env=None, timeout=60):
    return subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), *flags], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, cwd=REPO)


def _dummy_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel (module vt_dummy_wheel) for the --build wheels step."""
    name, ver = "vt_dummy_wheel", "0.1"
    files = {f"{name}/__init__.py": "VALUE = 42\n",
             f"{name}-{ver}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {ver}\n",
             f"{name}-{ver}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                              "Tag: py3-none-any\n"}
    lines = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        lines.append(f"{path},sha256={digest},{len(text.encode())}")
    lines.append(f"{name}-{ver}.dist-info/RECORD,,")
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{name}-{ver}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
        z.writestr(f"{name}-{ver}.dist-info/RECORD", "\n".join(lines) + "\n")
    return wheel


def test_gpu_check_dry_run(tmp_path):
    proc = _gpu_check("--dry-run", env={"VT_BENCH_OUT": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "gpu_check_summary.json").read_text())
    assert summary["mode"] == "dry-run" and summary["failed"] == 0
    steps = {step["name"]: step for step in summary["steps"]}
    names = [step["name"] for step in summary["steps"]]
    assert names[0] == "pytest_gpu"
    assert names[1:6] == ["bench_rl_step", "bench_model", "bench_attention", "bench_losses", "bench_engine"]
    for name in names[1:6]:
        assert steps[name]["status"] == "dry-run" and "--device cuda" in steps[name]["command"]
    for name in ("bench_trl", "bench_rl_vs_sft", "bench_sandbox"):  # CPU work by design
        assert steps[name]["status"] == "cpu-only"
    assert "build" not in steps and "wheels" not in steps


def test_gpu_check_build_dry_run_lists_wheels_and_build(tmp_path):
    _dummy_wheel(tmp_path / "whl")
    proc = _gpu_check("--build", "--dry-run", env={"VT_BENCH_OUT": str(tmp_path / "res"),
                                                    "VT_WHEEL_DIR": str(tmp_path / "whl")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = json.loads((tmp_path / "res" / "gpu_check_summary.json").read_text())["steps"]
    assert [s["name"] for s in steps[:3]] == ["wheels", "build", "pytest_gpu"]
    assert "--no-index --no-deps" in steps[0]["command"] and "vt_dummy_wheel" in steps[0]["command"]
    assert "cmake.define.VT_CUDA_ARCHITECTURES=90 -e ." in steps[1]["command"]
    assert not list((tmp_path / "res").glob("*.whl"))  # nothing was installed or built


def test_gpu_check_usage():
    proc = _gpu_check("--bogus")
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_gpu_check_cpu_smoke_installs_wheels_and_packs(tmp_path):
    """--build --cpu-smoke: the carried wheels go on PYTHONPATH (vt_core is not rebuilt), one bench runs on CPU
    and everything is packed into at most 8 files, as in a device call's $OUT."""
    _dummy_wheel(tmp_path / "whl")
    pack = tmp_path / "out"
    proc = _gpu_check("--build", "--cpu-smoke", timeout=300, env={
        "VT_GPU_CHECK_PACK": str(pack), "VT_WHEEL_DIR": str(tmp_path / "whl"), "VT_GPU_CHECK_TESTS": "0",
        "VT_GPU_CHECK_ONLY": "^bench_model$", "VT_GPU_CHECK_BUDGET_S": "200", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in pack.iterdir())
    assert files == ["build.log", "gpu_check_summary.json", "results.tar.gz", "run.log"]
    summary = json.loads((pack / "gpu_check_summary.json").read_text())
    assert [(s["name"], s["status"]) for s in summary["steps"]] == [
        ("wheels", "ok"), ("build", "not-run"), ("bench_model", "ok")]
    assert summary["mode"] == "cpu-smoke" and summary["failed"] == 0 and summary["budget_seconds"] == 200
    run_log = (pack / "run.log").read_text()
    assert "wheels: vt_dummy_wheel-0.1" in run_log and "gpu_check: done" in run_log
    assert "Successfully installed vt-dummy-wheel" in (pack / "build.log").read_text()
    with tarfile.open(pack / "results.tar.gz") as tar:
        names = set(tar.getnames())
        record = json.loads(tar.extractfile("results/model_cpu.json").read())
    assert {"results/gpu_check_summary.json", "results/gpu_check_logs/bench_model.log"} <= names
    assert record["partial"] is False and record["device"]["kind"] == "cpu"
