"""Sandbox throughput and isolation overhead against plain ``subprocess.run`` (no isolation).

    python bench/bench_sandbox.py [--out DIR] [--quick] [--workers 2] [--soak 10000]

Contenders run the same programs with the same interpreter flags (``python -I -S -B``):
- plain_subprocess: ``subprocess.run`` of the program, no isolation; for the 10-test problem, one run
  per test with the test's stdin, outputs compared in the parent.
- sandbox: ``vt_core.sandbox.run_python`` (namespaces, uid switch, rlimits, private /tmp); for the
  10-test problem, ``vt_core.rewards.code_reward`` (one sandbox run, the harness forks one child per test).
Figures: single-run latency (harness.measure), executions/s with ``--workers`` threads (2 cores), and
the overhead ratio sandbox / plain (also as the median of alternating pairs, which load drift cannot skew).
``--soak N`` additionally runs N mixed executions through a SandboxPool and records what the host holds
before and after (record sandbox_soak_cpu.json).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from harness import Record, bench_argparser, measure, write_record

from vt_core.rewards.code import code_reward
from vt_core.rewards.code_formats import stdout_matches
from vt_core.sandbox import SandboxPool, isolation, run_python
from vt_core.sandbox.health import host_snapshot
from vt_core.sandbox.isolation import python_executable

TRIVIAL = "print('ok')"
SOLUTION = "import sys\nnums = list(map(int, sys.stdin.read().split()))\nprint(sum(nums), max(nums))"
TESTS = {"inputs": [" ".join(str(i * j) for j in range(1, 50)) + "\n" for i in range(1, 11)]}
TESTS["outputs"] = [f"{sum(map(int, s.split()))} {max(map(int, s.split()))}\n" for s in TESTS["inputs"]]
PYTHON = python_executable()


def plain_trivial() -> None:
    proc = subprocess.run([PYTHON, "-I", "-S", "-B", "-c", TRIVIAL], capture_output=True, timeout=10, env={})
    assert proc.stdout == b"ok\n"


def sandbox_trivial() -> None:
    res = run_python(TRIVIAL, time_limit_s=10)
    assert res.status == "ok" and res.stdout == "ok\n", res


def plain_ten_tests() -> None:
    for stdin, expected in zip(TESTS["inputs"], TESTS["outputs"]):
        proc = subprocess.run([PYTHON, "-I", "-S", "-B", "-c", SOLUTION], input=stdin.encode(), capture_output=True,
                              timeout=10, env={})
        assert stdout_matches(proc.stdout.decode(), expected)


def sandbox_ten_tests() -> None:
    r = code_reward(f"```python\n{SOLUTION}\n```", TESTS, cache_size=0)
    assert r.reward == 1.0 and r.total == 10, r


def throughput(fn, n: int, workers: int) -> float:
    """Calls of fn completed per second with ``workers`` threads."""
    with ThreadPoolExecutor(workers) as pool:
        start = time.perf_counter()
        list(pool.map(lambda _: fn(), range(n)))
        return n / (time.perf_counter() - start)


def paired_overhead(plain, sandboxed, n: int) -> float:
    """Median over n alternating pairs of (sandboxed time / plain time): robust to load that drifts."""
    ratios = []
    for _ in range(n):
        t0 = time.perf_counter()
        plain()
        t1 = time.perf_counter()
        sandboxed()
        ratios.append((time.perf_counter() - t1) / (t1 - t0))
    return statistics.median(ratios)


def soak(n: int, workers: int) -> dict:
    """N mixed runs (ok, error, timeout, orphaning fork) through one pool; host state before and after."""
    codes = [TRIVIAL, "raise SystemExit(3)", "import os\nif os.fork() == 0:\n    import time; time.sleep(60)",
             "x = bytearray(8 * 2**30)", "import time; time.sleep(60)"]
    with SandboxPool(workers=workers, time_limit_s=0.3, memory_mb=256) as pool:
        pool.map(codes[:2])
        before = host_snapshot()
        start = time.perf_counter()
        statuses: dict[str, int] = {}
        for chunk in range(0, n, 500):
            for res in pool.map([codes[i % len(codes)] for i in range(chunk, min(n, chunk + 500))]):
                statuses[res.status] = statuses.get(res.status, 0) + 1
        elapsed = time.perf_counter() - start
    after = host_snapshot()
    return {
        "runs": n, "seconds": elapsed, "exec_per_s": n / elapsed, "statuses": statuses,
        "open_fds_before": before.open_fds, "open_fds_after": after.open_fds,
        "children_after": len(after.children), "sandbox_processes_after": len(after.sandbox_processes),
        "unsafe_tmpdirs_after": len(after.unsafe_tmpdirs),
        "rss_mb_before": before.rss_mb, "rss_mb_after": after.rss_mb,
    }


def main() -> None:
    parser = bench_argparser("sandbox")
    parser.add_argument("--workers", type=int, default=2, help="concurrent executions (default 2: two cores)")
    parser.add_argument("--soak", type=int, default=0, help="also run this many executions as a leak soak")
    args = parser.parse_args()
    if args.device != "cpu":
        parser.error("the sandbox bench measures CPU processes: pass --device cpu")
    iso = isolation()
    if not iso.active:
        raise SystemExit(f"sandbox isolation unavailable: {iso.reason}")
    repeats, n_trivial, n_ten = (5, 40, 8) if args.quick else (30, 400, 60)

    results = Record("sandbox", args, shapes={"workers": args.workers, "trivial_runs": n_trivial,
                                              "ten_test_runs": n_ten, "tests_per_problem": 10},
                     baseline="plain_subprocess", notes=f"isolation: {iso.describe()}.")
    for name, trivial, ten in (("plain_subprocess", plain_trivial, plain_ten_tests),
                               ("sandbox", sandbox_trivial, sandbox_ten_tests)):
        results.running(name)
        figures = measure(trivial, device="cpu", warmup=3, repeats=repeats)
        ten_latency = measure(ten, device="cpu", warmup=1, repeats=max(3, repeats // 5))
        figures["ten_test_median_ms"] = ten_latency["median_ms"]
        figures["trivial_exec_per_s"] = throughput(trivial, n_trivial, args.workers)
        figures["ten_test_problems_per_s"] = throughput(ten, n_ten, args.workers)
        results[name] = figures  # printed, and the partial record written
    results["sandbox"]["paired_overhead_ratio"] = paired_overhead(plain_trivial, sandbox_trivial, repeats * 2)
    overhead = results["sandbox"]["paired_overhead_ratio"]
    notes = (f"isolation: {iso.describe()}. Overhead (median of paired sandbox / plain latencies, trivial "
             f"program): {overhead:.2f}x; "
             f"sandbox trivial executions/s with {args.workers} workers: "
             f"{results['sandbox']['trivial_exec_per_s']:.1f}. Load average at the end: {os.getloadavg()}.")
    results.notes = notes
    path = results.finish()
    print(notes, "\nwrote", path)
    if args.soak:
        figures = soak(args.soak, args.workers)
        print("soak", figures, flush=True)
        path = write_record("sandbox_soak", args, shapes={"runs": args.soak, "workers": args.workers},
                            results={"sandbox_pool": figures},
                            notes="mixed ok / error / memory / timeout / orphaning runs; host state before and after")
        print("wrote", path)


if __name__ == "__main__":
    sys.exit(main())
