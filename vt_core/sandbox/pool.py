"""A bounded pool of concurrent sandboxed executions."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterable

from vt_core.sandbox.runner import ExecResult, run_python


class SandboxPool:
    """Run up to ``workers`` sandboxed programs at once; every run reaps its whole process tree.

    Threads only wait on pipes (the programs run in their own processes), so a pool of N threads keeps at
    most N sandboxes alive. ``defaults`` are keyword arguments of :func:`run_python` applied to every run
    (a call's own keywords win). Use as a context manager, or call :meth:`close`.

        with SandboxPool(workers=2, time_limit_s=2) as pool:
            results = pool.map(["print(1)", "print(2)"])
    """

    def __init__(self, workers: int = 2, **defaults: Any):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.defaults = defaults
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vt-sandbox")

    def submit(self, code: str, stdin: str | bytes = "", **kwargs: Any) -> Future:
        """Schedule one run; the Future resolves to its ExecResult."""
        return self._executor.submit(run_python, code, stdin, **{**self.defaults, **kwargs})

    def map(self, codes: Iterable[str], stdins: Iterable[str | bytes] | None = None, **kwargs: Any) -> list[ExecResult]:
        """Run every program (with the matching stdin) and return the results in order."""
        codes = list(codes)
        stdins = list(stdins) if stdins is not None else [""] * len(codes)
        if len(stdins) != len(codes):
            raise ValueError(f"stdins has {len(stdins)} entries for {len(codes)} programs")
        futures = [self.submit(c, s, **kwargs) for c, s in zip(codes, stdins)]
        return [f.result() for f in futures]

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
