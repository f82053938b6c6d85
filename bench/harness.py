"""The one benchmark harness every bench/bench_*.py script uses.

Convention: ``python bench/bench_<x>.py [--device cpu|cuda] [--out DIR] [--quick]``; bench/ is then
``sys.path[0]``, so scripts do ``from harness import Record, bench_argparser, measure, measure_many``.

A script builds its inputs once, hands every contender the same inputs, times each with
:func:`measure` and collects the figures in a :class:`Record`, which prints each contender and rewrites
the JSON record (marked ``"partial": true``) the moment the contender is added, so a run cut short by a
timeout still reports what it measured; ``finish()`` writes the final record::

    parser = bench_argparser("attention")
    args = parser.parse_args()
    results = Record("attention", args, shapes={"T": 2048}, baseline="torch")
    results["torch"] = measure(lambda: ref(q, k, v), device=args.device)    # printed, partial JSON written
    results["triton"] = measure(lambda: ours(q, k, v), device=args.device)  # printed, partial JSON rewritten
    results.finish()                                                        # "partial": false, ratios

:func:`write_record` writes one record from a finished dict of results (what ``Record`` calls).

``measure_many({"torch": f, "triton": g}, device=...)`` gives the same dict of results in one call and,
on CPU, interleaves the contenders' timed calls (fairer on a shared, noisy machine); its ``on_result``
hands each contender to the Record as soon as it is measured.

Time limits: bench/gpu_check.sh gives every step a cap and tells the bench when it ends
(``$VT_BENCH_DEADLINE``, read by :func:`seconds_left`); at the cap the bench gets SIGTERM, and a Record
then writes what it has (``"partial": true``, naming the contender that was running).

Timing: on CUDA ``triton.testing.do_bench`` (it warms up, flushes L2 and synchronizes); on CPU repeated
wall clock with ``time.perf_counter``. ``measure(fn, setup=make)`` times ``fn(make())`` without the
``make()`` part (e.g. a backward pass on a fresh forward graph per call; CUDA events around ``fn`` only).
Peak memory is what ``fn`` allocates beyond what was allocated before it: on CUDA from the caching
allocator's peak counter, on CPU from the torch profiler's memory events (every torch CPU allocation and
free, integrated over time).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import signal
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


def seconds_left(default: float = float("inf")) -> float:
    """Seconds until ``$VT_BENCH_DEADLINE`` (a Unix time that gpu_check.sh sets for each step: when its
    timeout will stop the bench), or ``default`` when it is not set. Benches use it to bound work whose
    length they cannot know beforehand (e.g. transformers' ``generate`` through ``max_time``)."""
    deadline = os.environ.get("VT_BENCH_DEADLINE")
    if not deadline:
        return default
    return float(deadline) - time.time()


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


def _measure_cpu(fns: dict[str, Callable[[], Any]], warmup: int, repeats: int,
                 on_result: Callable[[str, dict], Any] | None = None) -> dict[str, dict[str, Any]]:
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
    out = {}
    for name in names:
        out[name] = {**_quantiles_ms(wall[name]), "cpu_time_median_ms": statistics.median(cpu[name]),
                     "repeats": repeats, "timer": "perf_counter", "peak_mem_mb": cpu_peak_memory_mb(fns[name])}
        if on_result is not None:
            on_result(name, out[name])
    return out


def _measure_cpu_setup(fn: Callable[[Any], Any], setup: Callable[[], Any], warmup: int, repeats: int) -> dict:
    """``fn(setup())`` timed without ``setup()``: wall clock and process CPU time of ``fn`` alone."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"measure: need repeats >= 1 and warmup >= 0, got {repeats=} {warmup=}")
    for _ in range(warmup):
        fn(setup())
    wall, cpu = [], []
    for _ in range(repeats):
        arg = setup()
        start, start_cpu = time.perf_counter(), time.process_time()
        fn(arg)
        wall.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
        del arg
    arg = setup()
    peak = cpu_peak_memory_mb(lambda: fn(arg))
    return {**_quantiles_ms(wall), "cpu_time_median_ms": statistics.median(cpu), "repeats": repeats,
            "timer": "perf_counter, setup excluded", "peak_mem_mb": peak}


def _cuda_peak_mb(call: Callable[[], Any]) -> float:
    """MiB the caching allocator's peak rose above what was allocated before ``call``."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = call()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del result
    return peak / 2**20


def _measure_cuda(fn: Callable[[], Any], warmup_ms: float, rep_ms: float) -> dict[str, Any]:
    import triton.testing

    median, p20, p80, fastest = triton.testing.do_bench(
        fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8, 0.0]
    )
    return {"median_ms": median, "p20_ms": p20, "p80_ms": p80, "min_ms": fastest,
            "timer": "triton.testing.do_bench", "peak_mem_mb": _cuda_peak_mb(fn)}


def _measure_cuda_setup(fn: Callable[[Any], Any], setup: Callable[[], Any], warmup_ms: float,
                        rep_ms: float) -> dict[str, Any]:
    """``triton.testing.do_bench``'s method for ``fn(setup())`` with ``setup()`` outside the timed region:
    per call, ``setup()`` is queued, the L2 cache flushed, then CUDA events around ``fn`` alone (the
    device runs the stream in order, so the events see only ``fn``'s work)."""
    from triton import runtime

    driver = runtime.driver.active
    cache = driver.get_empty_cache_for_benchmark()

    def timed(n: int) -> list[float]:
        events = []
        for _ in range(n):
            arg = setup()
            driver.clear_cache(cache)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(arg)
            end.record()
            events.append((start, end))
            del arg
        torch.cuda.synchronize()
        return [s.elapsed_time(e) for s, e in events]

    fn(setup())
    torch.cuda.synchronize()
    estimate_ms = max(statistics.fmean(timed(3)), 1e-3)
    timed(max(1, int(warmup_ms / estimate_ms)))
    times = timed(max(1, int(rep_ms / estimate_ms)))
    arg = setup()
    peak = _cuda_peak_mb(lambda: fn(arg))
    return {**_quantiles_ms(times), "repeats": len(times), "timer": "cuda events, setup excluded",
            "peak_mem_mb": peak}


def measure(
    fn: Callable[..., Any],
    *,
    device: str,
    warmup: int = 2,
    repeats: int = 10,
    warmup_ms: float = 25.0,
    rep_ms: float = 100.0,
    setup: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Time ``fn()`` (no arguments) and measure its peak memory.

    Returns ``{"median_ms", "p20_ms", "p80_ms", "min_ms", "peak_mem_mb", "timer", ...}``.
    CPU: ``warmup`` untimed calls, then ``repeats`` timed calls (``perf_counter``; also
    ``cpu_time_median_ms``, the process CPU time of a call), then one profiled call for memory.
    CUDA: ``triton.testing.do_bench`` with ``warmup_ms``/``rep_ms`` budgets, then one call between
    ``reset_peak_memory_stats`` and ``max_memory_allocated``. ``peak_mem_mb`` is MiB allocated during
    the call beyond what was allocated before it.
    ``setup``: each call is ``fn(setup())`` and only ``fn`` is timed (and its memory measured): e.g.
    ``setup`` runs a forward pass and ``fn`` its backward, on a fresh graph every call (no
    ``retain_graph``). On CUDA the timing then uses CUDA events around ``fn`` after an L2 flush (the same
    method as do_bench, which cannot leave part of a call out).
    Callers add their own derived figures (tokens/s, TFLOP/s) to the returned dict.
    """
    if setup is not None:
        if device == "cuda":
            return _measure_cuda_setup(fn, setup, warmup_ms, rep_ms)
        if device == "cpu":
            return _measure_cpu_setup(fn, setup, warmup, repeats)
        raise ValueError(f"measure: device must be 'cpu' or 'cuda', got {device!r}")
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
    on_result: Callable[[str, dict], Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """:func:`measure` for several contenders at once: ``{name: fn}`` -> ``{name: figures}``.

    On CPU the timed calls are interleaved round-robin (round r calls every contender once, starting
    at a rotating one), which keeps the comparison fair when other work on the machine comes and goes.
    On CUDA each contender is measured in turn (do_bench is stable there).
    ``on_result(name, figures)`` is called for each contender as soon as its figures exist (on CUDA right
    after it is measured, on CPU after the interleaved rounds), e.g. to add it to a :class:`Record`.
    """
    if device == "cuda":
        out = {}
        for name, fn in fns.items():
            out[name] = _measure_cuda(fn, warmup_ms, rep_ms)
            if on_result is not None:
                on_result(name, out[name])
        return out
    if device == "cpu":
        return _measure_cpu(fns, warmup, repeats, on_result)
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


def _static_record_fields(device: str) -> dict[str, Any]:
    return {**git_state(), "device": device_info(device), "versions": versions()}


def write_record(
    name: str,
    args: argparse.Namespace,
    shapes: dict,
    results: dict[str, dict],
    baseline: str | None = None,
    notes: str = "",
    partial: bool = False,
    _static: dict[str, Any] | None = None,
) -> Path:
    """Write ``<args.out>/<name>_<args.device>.json`` and return its path.

    The record holds: commit and dirty flag, UTC timestamp, device description, package versions, the
    command line, ``shapes``, each contender's figures (``results``: contender -> dict from
    :func:`measure` plus any derived figures) and, when ``baseline`` names a contender, ``ratios``:
    for every numeric figure, contender value / baseline value (so < 1 is faster for ``*_ms`` and
    leaner for ``peak_mem_mb``; > 1 is better for throughputs such as tokens/s).
    ``partial``: the run has not finished (``"partial": true`` in the record); a partial record may lack
    its baseline, and then has no ratios yet.
    """
    if baseline is not None and baseline not in results and not partial:
        raise ValueError(f"write_record: baseline {baseline!r} is not one of the contenders {sorted(results)}")
    static = _static if _static is not None else _static_record_fields(args.device)
    record = {
        "name": name,
        "commit": static["commit"],
        "dirty": static["dirty"],
        "partial": bool(partial),
        "timestamp_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": static["device"],
        "versions": static["versions"],
        "command": shlex.join(["python", *sys.argv]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "shapes": shapes,
        "results": results,
        "baseline": baseline,
        "ratios": _ratios(results, baseline) if baseline is not None and baseline in results else None,
        "notes": notes,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}_{args.device}.json"
    tmp = path.with_suffix(f".json.tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


_SUMMARY_SKIP = {"p20_ms", "p80_ms", "min_ms", "timer", "repeats"}


def summary_line(key: str, figures: Any, limit: int = 220) -> str:
    """One line for a contender: its error, or median (p20..p80) and its other scalar figures."""
    if not isinstance(figures, dict):
        return f"{key}: {figures}"[:limit]
    if "error" in figures:
        return f"{key}: error {figures['error']}"[:limit]
    parts = []
    if isinstance(figures.get("median_ms"), (int, float)):
        med = f"{figures['median_ms']:.4g} ms"
        if isinstance(figures.get("p20_ms"), (int, float)) and isinstance(figures.get("p80_ms"), (int, float)):
            med += f" ({figures['p20_ms']:.4g}..{figures['p80_ms']:.4g})"
        parts.append(med)
    for name, value in figures.items():
        if name in _SUMMARY_SKIP or name == "median_ms":
            continue
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, float):
            parts.append(f"{name} {value:.4g}")
        elif isinstance(value, (int, str)):
            parts.append(f"{name} {value}")
    return f"{key}: " + "  ".join(parts)[:limit]


class Record(dict):
    """The results of one bench run (contender -> figures), written as they come.

    ``record[contender] = figures`` prints the contender's line (:func:`summary_line`, flushed) and
    rewrites ``<out>/<name>_<device>.json`` with ``"partial": true``; ``finish()`` writes it with
    ``"partial": false`` (and the ratios, which need the baseline). ``running(label)`` prints what starts
    next. A SIGTERM (gpu_check.sh's timeout) writes the partial record once more, naming the contender
    that was running, and exits with 143, so a bench cut short still reports what it measured.
    ``shapes``, ``baseline`` and ``notes`` are attributes: set them whenever they are known.
    """

    def __init__(self, name: str, args: argparse.Namespace, shapes: dict | None = None,
                 baseline: str | None = None, notes: str = "", prefix: str | None = None):
        super().__init__()
        self.name, self.args = name, args
        self.shapes = shapes if shapes is not None else {}
        self.baseline, self.notes = baseline, notes
        self.prefix = prefix if prefix is not None else f"[{name}]"
        self.current: str | None = None
        self.path: Path | None = None
        self.started = time.perf_counter()
        self._static = _static_record_fields(args.device)
        self._finished = False
        self._previous_handler = None
        if threading_is_main():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def __setitem__(self, key: str, figures: Any) -> None:
        super().__setitem__(key, figures)
        if self.current == key:
            self.current = None
        print(f"{self.prefix} {summary_line(key, figures)}", flush=True)
        self.write(partial=True)

    def update(self, other=(), **kwargs) -> None:  # route through __setitem__ (print + write)
        for key, value in dict(other, **kwargs).items():
            self[key] = value

    def running(self, label: str) -> None:
        """Say (flushed) which contender or phase starts now; a SIGTERM names it in the record."""
        self.current = label
        print(f"{self.prefix} ... {label} ({time.perf_counter() - self.started:.0f} s in)", flush=True)

    def write(self, partial: bool, extra_note: str = "") -> Path:
        notes = self.notes
        if partial:
            notes = (notes + " " if notes else "") + "PARTIAL: written before the run finished." + extra_note
        self.path = write_record(self.name, self.args, self.shapes, dict(self), baseline=self.baseline,
                                 notes=notes, partial=partial, _static=self._static)
        return self.path

    def finish(self) -> Path:
        """Write the final record (the baseline must be among the contenders) and return its path."""
        self._finished = True
        if self._previous_handler is not None and threading_is_main():
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None
        return self.write(partial=False)

    def _on_sigterm(self, signum, frame) -> None:
        if not self._finished:
            running = f" Stopped by SIGTERM (a timeout) while running {self.current!r}." if self.current else (
                " Stopped by SIGTERM (a timeout).")
            try:
                path = self.write(partial=True, extra_note=running)
                print(f"{self.prefix} SIGTERM: wrote the partial record {path}", flush=True)
            except Exception as exc:  # noqa: BLE001 - dying anyway; say why the record was not written
                print(f"{self.prefix} SIGTERM: could not write the partial record: {exc!r}", flush=True)
        os._exit(143)


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
