"""The one benchmark harness every bench/bench_*.py script uses.

Convention: ``python bench/bench_<x>.py [--device cpu|cuda] [--out DIR] [--quick]``; bench/ is then
``sys.path[0]``, so scripts do ``from harness import bench_argparser, measure, measure_many, write_record``.

A script builds its inputs once, hands every contender the same inputs, times each with
:func:`measure` and writes one JSON record with :func:`write_record`::

    parser = bench_argparser("attention")
    args = parser.parse_args()
    results = {"torch": measure(lambda: ref(q, k, v), device=args.device),
               "triton": measure(lambda: ours(q, k, v), device=args.device)}
    write_record("attention", args, shapes={"T": 2048}, results=results, baseline="torch")

``measure_many({"torch": f, "triton": g}, device=...)`` gives the same dict of results in one call and,
on CPU, interleaves the contenders' timed calls (fairer on a shared, noisy machine).

Timing: on CUDA ``triton.testing.do_bench`` (it warms up, flushes L2 and synchronizes); on CPU repeated
wall clock with ``time.perf_counter``. Peak memory is what ``fn`` allocates beyond what was allocated
before it: on CUDA from the caching allocator's peak counter, on CPU from the torch profiler's memory
events (every torch CPU allocation and free, integrated over time).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "bench" / "results"
_NOT_RATIOS = {"repeats"}
_VERSIONED = ("torch", "triton", "transformers", "liger-kernel", "numpy", "trl", "vt_core")


def bench_argparser(name: str) -> argparse.ArgumentParser:
    """The common command line: ``--device {cpu,cuda}``, ``--out DIR``, ``--quick``.

    ``--device`` defaults to cuda when available, else cpu; ``--out`` to ``$VT_BENCH_OUT`` or
    bench/results; ``--quick`` asks for small shapes (smoke tests). Scripts add their own options.
    """
    parser = argparse.ArgumentParser(prog=f"bench_{name}", description=f"vt_core benchmark: {name}")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="device to run on (default: cuda if available, else cpu)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("VT_BENCH_OUT") or DEFAULT_OUT),
        help="folder for the JSON record (default: $VT_BENCH_OUT or bench/results)",
    )
    parser.add_argument("--quick", action="store_true", help="small shapes and few repeats (smoke test)")
    parser.set_defaults(bench_name=name)
    return parser


def _quantiles_ms(times_ms: list[float]) -> dict[str, float]:
    ordered = sorted(times_ms)
    q = statistics.quantiles(ordered, n=10, method="inclusive") if len(ordered) > 1 else [ordered[0]] * 9
    return {
        "median_ms": statistics.median(ordered),
        "p20_ms": q[1],
        "p80_ms": q[7],
        "min_ms": ordered[0],
    }


def cpu_peak_memory_mb(fn: Callable[[], Any]) -> float:
    """Peak torch CPU memory (MiB) allocated by one call of ``fn`` beyond what was allocated before it.

    Runs ``fn`` once under the torch profiler with ``profile_memory=True`` and integrates its
    allocation (+bytes) and free (-bytes) events in time order. Memory ``fn`` returns counts while
    it is alive inside the call; it is released when the result is dropped here. The profiler does
    not record frees of blocks allocated before it started, so memory ``fn`` releases from earlier
    (e.g. old gradients it sets to None) does not lower the figure: it is the high-water mark of
    what the call itself allocated.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
        del result
    events = [
        (e.start_ns(), i, e.nbytes())
        for i, e in enumerate(prof.profiler.kineto_results.events())
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort()
    live = peak = 0
    for _, _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20


def _measure_cpu(fns: dict[str, Callable[[], Any]], warmup: int, repeats: int) -> dict[str, dict[str, Any]]:
    """Round-robin: each round calls every contender once (rotating the order), so load drift on a
    shared machine hits all contenders alike. Wall clock and process CPU time (all threads) per call."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"measure: need repeats >= 1 and warmup >= 0, got {repeats=} {warmup=}")
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start, start_cpu = time.perf_counter(), time.process_time()
            fns[name]()
            wall[name].append((time.perf_counter() - start) * 1e3)
            cpu[name].append((time.process_time() - start_cpu) * 1e3)
    return {
        name: {**_quantiles_ms(wall[name]), "cpu_time_median_ms": statistics.median(cpu[name]),
               "repeats": repeats, "timer": "perf_counter", "peak_mem_mb": cpu_peak_memory_mb(fns[name])}
        for name in names
    }


def _measure_cuda(fn: Callable[[], Any], warmup_ms: float, rep_ms: float) -> dict[str, Any]:
    import triton.testing

    median, p20, p80, fastest = triton.testing.do_bench(
        fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8, 0.0]
    )
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del result
    return {"median_ms": median, "p20_ms": p20, "p80_ms": p80, "min_ms": fastest,
            "timer": "triton.testing.do_bench", "peak_mem_mb": peak / 2**20}


def measure(
    fn: Callable[[], Any],
    *,
    device: str,
    warmup: int = 2,
    repeats: int = 10,
    warmup_ms: float = 25.0,
    rep_ms: float = 100.0,
) -> dict[str, Any]:
    """Time ``fn()`` (no arguments) and measure its peak memory.

    Returns ``{"median_ms", "p20_ms", "p80_ms", "min_ms", "peak_mem_mb", "timer", ...}``.
    CPU: ``warmup`` untimed calls, then ``repeats`` timed calls (``perf_counter``; also
    ``cpu_time_median_ms``, the process CPU time of a call), then one profiled call for memory.
    CUDA: ``triton.testing.do_bench`` with ``warmup_ms``/``rep_ms`` budgets, then one call between
    ``reset_peak_memory_stats`` and ``max_memory_allocated``. ``peak_mem_mb`` is MiB allocated during
    the call beyond what was allocated before it.
    Callers add their own derived figures (tokens/s, TFLOP/s) to the returned dict.
    """
    return measure_many({"fn": fn}, device=device, warmup=warmup, repeats=repeats, warmup_ms=warmup_ms,
                        rep_ms=rep_ms)["fn"]


def measure_many(
    fns: dict[str, Callable[[], Any]],
    *,
    device: str,
    warmup: int = 2,
    repeats: int = 10,
    warmup_ms: float = 25.0,
    rep_ms: float = 100.0,
) -> dict[str, dict[str, Any]]:
    """:func:`measure` for several contenders at once: ``{name: fn}`` -> ``{name: figures}``.

    On CPU the timed calls are interleaved round-robin (round r calls every contender once, starting
    at a rotating one), which keeps the comparison fair when other work on the machine comes and goes.
    On CUDA each contender is measured in turn (do_bench is stable there).
    """
    if device == "cuda":
        return {name: _measure_cuda(fn, warmup_ms, rep_ms) for name, fn in fns.items()}
    if device == "cpu":
        return _measure_cpu(fns, warmup, repeats)
    raise ValueError(f"measure: device must be 'cpu' or 'cuda', got {device!r}")


def git_state() -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the repository holding bench/."""
    def git(*cmd: str) -> str | None:
        proc = subprocess.run(["git", "-C", str(REPO_ROOT), *cmd], capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def device_info(device: str) -> dict[str, Any]:
    """What the figures were measured on: CPU model and cores, or GPU name, memory and capability."""
    info: dict[str, Any] = {"kind": device, "platform": platform.platform()}
    cpu_model = platform.processor() or None
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    info["cpu"] = {"model": cpu_model, "logical_cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if hasattr(os, "getloadavg"):
        info["cpu"]["load_average_1_5_15m"] = [round(x, 2) for x in os.getloadavg()]  # other work on the machine
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info["gpu"] = {
            "name": props.name,
            "memory_gib": round(props.total_memory / 2**30, 2),
            "capability": f"{props.major}.{props.minor}",
            "count": torch.cuda.device_count(),
            "cuda": torch.version.cuda,
        }
    return info


def versions() -> dict[str, str]:
    """Python and the installed versions of the packages that matter for the figures."""
    found = {"python": platform.python_version()}
    for dist in _VERSIONED:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _ratios(results: dict[str, dict], baseline: str) -> dict[str, dict[str, float | None]]:
    base = results[baseline]
    ratios: dict[str, dict[str, float | None]] = {}
    for contender, figures in results.items():
        ratios[contender] = {}
        for key, value in figures.items():
            if key in _NOT_RATIOS:
                continue
            ref = base.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(ref, (int, float)):
                ratios[contender][key] = value / ref if ref else None
    return ratios


def write_record(
    name: str,
    args: argparse.Namespace,
    shapes: dict,
    results: dict[str, dict],
    baseline: str | None = None,
    notes: str = "",
) -> Path:
    """Write ``<args.out>/<name>_<args.device>.json`` and return its path.

    The record holds: commit and dirty flag, UTC timestamp, device description, package versions, the
    command line, ``shapes``, each contender's figures (``results``: contender -> dict from
    :func:`measure` plus any derived figures) and, when ``baseline`` names a contender, ``ratios``:
    for every numeric figure, contender value / baseline value (so < 1 is faster for ``*_ms`` and
    leaner for ``peak_mem_mb``; > 1 is better for throughputs such as tokens/s).
    """
    if baseline is not None and baseline not in results:
        raise ValueError(f"write_record: baseline {baseline!r} is not one of the contenders {sorted(results)}")
    record = {
        "name": name,
        **git_state(),
        "timestamp_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_info(args.device),
        "versions": versions(),
        "command": shlex.join(["python", *sys.argv]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "shapes": shapes,
        "results": results,
        "baseline": baseline,
        "ratios": _ratios(results, baseline) if baseline is not None else None,
        "notes": notes,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}_{args.device}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path
