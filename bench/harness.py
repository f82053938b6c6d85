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

The record side (:class:`Record`, :func:`write_record`, :func:`summary_line`, and the commit, device and
versions a record names) is in bench/harness_record.py; it is re-exported here.

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
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from harness_record import (
    REPO_ROOT,
    Record,
    device_info,
    git_state,
    summary_line,
    versions,
    write_record,
)

__all__ = [
    "DEFAULT_OUT", "REPO_ROOT", "Record", "bench_argparser", "cpu_peak_memory_mb", "device_info", "git_state",
    "measure", "measure_many", "seconds_left", "summary_line", "versions", "write_record",
]

DEFAULT_OUT = REPO_ROOT / "bench" / "results"


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
