"""Parallel reward scoring that overlaps with generation.

The RL loop submits each completion as soon as it finishes and collects rewards when the batch is done::

    with RewardScorer(max_workers=8, timeout_s=30) as scorer:
        for problem, completion, key in finished_completions():   # while generation continues
            scorer.submit(problem, completion, key)
        rewards = scorer.results()                                  # {key: RewardResult}, submission order

Every future resolves to a ``RewardResult``, never to an exception. A verifier that raises, returns
something else than its RewardResult(s), crashes its worker or runs past ``timeout_s`` is an
infrastructure failure, not a reward: the result has ``infra_error`` set to what happened (``"<verifier>
raised <Error>: <message>"``, ``"... timed out after T s"``; the traceback in ``extra["traceback"]``) and
reward 0, which the trainer and the evaluation count as ``infra_error_frac`` and never train on. Neither
stops the scorer.

Modes
    ``"thread"`` (default): worker threads, for I/O-bound or self-isolating verifiers (the code sandbox, the
    math verifier's worker subprocesses). A timed-out call's thread cannot be killed: it is abandoned
    (its late result is dropped) and a replacement thread keeps the pool at ``max_workers``.
    ``"process"``: one child process per worker (multiprocessing ``spawn``), for CPU-bound verifiers run
    inline; a timed-out or crashed child is killed and replaced. Children set ``VT_REWARDS_INLINE=1`` so
    the math verifier runs sympy directly instead of in a nested subprocess (its per-problem
    ``timeout_s`` then yields to the scorer's). Verifier functions are sent to the children by pickle
    (module-level functions; the child imports their module once, outside the per-call timeout).
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import multiprocessing as mp
import pickle
import queue
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Callable, Hashable

from vt_core.rewards.base import RewardResult
from vt_core.rewards.calls import (
    CHILD_STARTUP_TIMEOUT_S,
    GroupCall,
    Job,
    child_main,
    describe,
    error_result,
    run_verifier,
    timeout_result,
)
from vt_core.rewards.registry import get_group_verifier, get_verifier, resolve_verifier_name

_STOP = object()


class RewardScorer:
    """Scores completions on a pool of threads or processes while the caller keeps generating.

    max_workers: concurrent verifier calls. mode: "thread" or "process" (module docstring).
    timeout_s: wall-clock limit per call (from when a worker starts it; None = no limit).
    verifier: a registered name or a callable used for every problem; None picks per problem
    (``problem["verifier"]``, else ``problem["domain"]``).
    """

    def __init__(
        self,
        max_workers: int = 4,
        mode: str = "thread",
        timeout_s: float | None = 30.0,
        verifier: str | Callable | None = None,
    ):
        if mode not in ("thread", "process"):
            raise ValueError(f"mode must be 'thread' or 'process', got {mode!r}")
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive or None, got {timeout_s}")
        self.mode, self.max_workers, self.timeout_s, self.verifier = mode, max_workers, timeout_s, verifier
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending: dict[Hashable, cf.Future] = {}
        self._counter = itertools.count()
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._running: dict[threading.Thread, tuple[Job, float]] = {}
        self._abandoned: set[threading.Thread] = set()
        self._stop_watchdog = threading.Event()
        self.stats = {"submitted": 0, "completed": 0, "timeouts": 0, "errors": 0, "replaced_workers": 0}
        target = self._thread_worker if mode == "thread" else self._process_dispatcher
        for _ in range(max_workers):
            self._start_thread(target)
        self._watchdog = None
        if mode == "thread" and timeout_s is not None:
            self._watchdog = threading.Thread(target=self._watch, name="vt-reward-watchdog", daemon=True)
            self._watchdog.start()

    # ------------------------------------------------------------------ public API

    def submit(
        self, problem: dict, completion: str, key: Hashable = None, verifier: str | Callable | None = None
    ) -> cf.Future:
        """Queue one completion; returns a Future resolving to its RewardResult.

        key identifies it in ``results()`` / ``as_completed()`` (default: a running integer); keys of
        not-yet-collected submissions must be unique. The verifier is resolved now, so an unknown name
        raises KeyError here rather than in a worker.
        """
        fn = self._resolve(problem, verifier)
        future: cf.Future = cf.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("RewardScorer is shut down")
            if key is None:
                key = next(self._counter)
            if key in self._pending:
                raise ValueError(f"key {key!r} is already pending")
            self._pending[key] = future
            self.stats["submitted"] += 1
            future.add_done_callback(self._count)
            self._queue.put(Job(future, fn, problem, completion))  # under the lock: before any stop sentinel
        return future

    def submit_group(self, problem: dict, completions: list[str], keys: list[Hashable] | None = None,
                     verifier: str | Callable | None = None) -> list[cf.Future]:
        """Queue several completions of one problem (e.g. a GRPO group); one Future per completion, as
        ``submit`` gives. When the verifier has a group form (``register_verifier(..., group=...)``: the
        code verifier runs the group in one sandbox launch) they are scored in one call, with ``timeout_s``
        scaled by their number; otherwise each is submitted alone. Rewards are the same either way."""
        keys = list(keys) if keys is not None else [None] * len(completions)
        if len(keys) != len(completions):
            raise ValueError(f"{len(keys)} keys for {len(completions)} completions")
        chosen = verifier if verifier is not None else self.verifier
        group = None if callable(chosen) else get_group_verifier(resolve_verifier_name(problem, chosen))
        if group is None or len(completions) < 2:
            return [self.submit(problem, c, k, verifier) for c, k in zip(completions, keys)]
        futures = [cf.Future() for _ in completions]
        inner: cf.Future = cf.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("RewardScorer is shut down")
            keys = [next(self._counter) if k is None else k for k in keys]
            taken = [k for k in keys if k in self._pending] or [k for k in set(keys) if keys.count(k) > 1]
            if taken:
                raise ValueError(f"key {taken[0]!r} is already pending")
            for k, f in zip(keys, futures):
                self._pending[k] = f
                f.add_done_callback(self._count)
                f.set_running_or_notify_cancel()
            self.stats["submitted"] += len(futures)
            self._queue.put(Job(inner, GroupCall(group, len(completions)), problem, list(completions)))

        def split(done: cf.Future) -> None:
            value = self._result_of(done)
            for k, f in enumerate(futures):
                f.set_result(value[k] if isinstance(value, list) else value)

        inner.add_done_callback(split)
        return list(futures)  # a copy: the caller may extend it; split() must see only this group's

    def as_completed(self, timeout: float | None = None) -> Iterator[tuple[Hashable, RewardResult]]:
        """Yield (key, result) for the submissions pending now, as they finish; each is yielded once.

        Raises TimeoutError if they are not all done within ``timeout`` seconds.
        """
        with self._lock:
            snapshot = dict(self._pending)
        keys = {f: k for k, f in snapshot.items()}
        for future in cf.as_completed(keys, timeout=timeout):
            key = keys[future]
            with self._lock:
                self._pending.pop(key, None)
            yield key, self._result_of(future)

    def results(self, timeout: float | None = None) -> dict[Hashable, RewardResult]:
        """Wait for every pending submission; return {key: result} in submission order and forget them."""
        with self._lock:
            snapshot = dict(self._pending)
        _, not_done = cf.wait(list(snapshot.values()), timeout=timeout)
        if not_done:
            raise TimeoutError(f"{len(not_done)} of {len(snapshot)} rewards not ready after {timeout} s")
        with self._lock:
            for key in snapshot:
                self._pending.pop(key, None)
        return {key: self._result_of(f) for key, f in snapshot.items()}

    def shutdown(self, wait: bool = True, cancel_pending: bool = False) -> None:
        """Stop accepting work; with cancel_pending, queued (not started) calls resolve as cancelled.

        wait=True joins the workers (running calls finish or time out first); idempotent.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            n_threads = len(self._threads)
        if cancel_pending:
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                job.future.cancel()
                job.future.set_running_or_notify_cancel()  # CANCELLED -> CANCELLED_AND_NOTIFIED: wakes waiters
        for _ in range(n_threads):
            self._queue.put(_STOP)
        while wait:  # the watchdog may swap threads meanwhile: re-read the list
            with self._lock:
                alive = [t for t in self._threads if t.is_alive()]
            if not alive:
                break
            alive[0].join(0.05)
        self._stop_watchdog.set()
        if wait and self._watchdog is not None:
            self._watchdog.join()

    def __enter__(self) -> RewardScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown(wait=True, cancel_pending=exc[0] is not None)

    # ------------------------------------------------------------------ internals

    def _resolve(self, problem: dict, verifier: str | Callable | None) -> Callable:
        chosen = verifier if verifier is not None else self.verifier
        if callable(chosen):
            return chosen
        return get_verifier(resolve_verifier_name(problem, chosen))

    def _count(self, future: cf.Future) -> None:
        if future.cancelled():
            return
        result = future.result()
        with self._lock:
            self.stats["completed"] += 1
            if result.extra.get("timed_out"):
                self.stats["timeouts"] += 1
            elif result.extra.get("error"):
                self.stats["errors"] += 1

    @staticmethod
    def _result_of(future: cf.Future) -> RewardResult:
        if future.cancelled():
            reason = "cancelled before scoring"
            return RewardResult(0.0, reasons=[reason], extra={"cancelled": True}, infra_error=reason)
        return future.result()

    def _start_thread(self, target: Callable) -> None:
        t = threading.Thread(target=target, name=f"vt-reward-{self.mode}-{len(self._threads)}", daemon=True)
        self._threads.append(t)
        t.start()

    @staticmethod
    def _finish(job: Job, result: RewardResult) -> None:
        """Resolve the job's future unless the watchdog already did (no lock held: callbacks run here)."""
        try:
            job.future.set_result(result)
        except cf.InvalidStateError:
            pass

    def _thread_worker(self) -> None:
        me = threading.current_thread()
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            if not job.future.set_running_or_notify_cancel():
                continue
            deadline = time.monotonic() + self.timeout_s * job.scale if self.timeout_s is not None else float("inf")
            with self._lock:
                self._running[me] = (job, deadline)
            result = run_verifier(job.fn, job.problem, job.completion)
            with self._lock:
                self._running.pop(me, None)
                abandoned = me in self._abandoned
                self._abandoned.discard(me)
            if abandoned:  # the watchdog already resolved the future and started a replacement
                return
            self._finish(job, result)

    def _watch(self) -> None:
        poll = min(0.05, self.timeout_s / 4)
        while not self._stop_watchdog.wait(poll):
            now = time.monotonic()
            with self._lock:
                late = [(t, job) for t, (job, deadline) in self._running.items() if now > deadline]
                for t, _ in late:
                    del self._running[t]
                    self._abandoned.add(t)
                    self._threads.remove(t)
                    self.stats["replaced_workers"] += 1
                    # Always replace (even after shutdown): the replacement drains the queue and takes
                    # the stop sentinel the abandoned thread will never read.
                    self._start_thread(self._thread_worker)
            for _, job in late:
                self._finish(job, timeout_result(job.fn, self.timeout_s * job.scale))

    def _spawn_child(self):
        ctx = mp.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe()
        proc = ctx.Process(target=child_main, args=(child_conn,), daemon=True)
        proc.start()
        child_conn.close()
        if not parent_conn.poll(CHILD_STARTUP_TIMEOUT_S) or parent_conn.recv() != "ready":
            self._kill_child(proc, parent_conn)
            raise RuntimeError(f"reward worker process did not start within {CHILD_STARTUP_TIMEOUT_S:g} s")
        return proc, parent_conn

    def _process_dispatcher(self) -> None:
        """Feeds one child process (started ahead of the first job); replaces it after a timeout or crash."""
        proc, conn, spawn_error, loaded = None, None, None, None
        try:
            while True:
                if proc is None and spawn_error is None:
                    try:
                        proc, conn = self._spawn_child()
                    except RuntimeError as e:
                        spawn_error = str(e)
                job = self._queue.get()
                if job is _STOP:
                    return
                if not job.future.set_running_or_notify_cancel():
                    continue
                if proc is None:
                    self._finish(job, error_result(spawn_error))
                    spawn_error = None
                    continue
                result, child_ok = self._run_in_child(proc, conn, job, job.fn is loaded)
                loaded = job.fn if child_ok else loaded
                if not child_ok or not proc.is_alive():
                    self._kill_child(proc, conn)
                    proc, conn, loaded = None, None, None
                    with self._lock:
                        self.stats["replaced_workers"] += 1
                self._finish(job, result)
        finally:
            if proc is not None:
                try:
                    conn.send(None)
                    proc.join(timeout=5.0)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the child is gone already; _kill_child reaps it
                self._kill_child(proc, conn)

    def _run_in_child(self, proc, conn, job: Job, is_loaded: bool) -> tuple[RewardResult, bool]:
        """Run one job in the child: (result, whether the child is still usable with job.fn loaded).

        A pickling failure happens before anything is written, so it leaves the child usable but
        without job.fn; it is then replaced anyway, which keeps the bookkeeping simple.
        """
        name = describe(job.fn)
        try:
            if not is_loaded:
                conn.send(("load", job.fn))
                if not conn.poll(CHILD_STARTUP_TIMEOUT_S) or conn.recv() != "loaded":
                    return error_result(f"{name} could not be loaded in a worker process"), False
            conn.send(("run", job.problem, job.completion))
            if conn.poll(None if self.timeout_s is None else self.timeout_s * job.scale):
                return conn.recv(), True
            return timeout_result(job.fn, self.timeout_s * job.scale), False
        except (EOFError, BrokenPipeError, ConnectionResetError):
            proc.join(timeout=1.0)
            return error_result(f"{name} crashed its worker process (exit code {proc.exitcode})"), False
        except (pickle.PicklingError, AttributeError, TypeError) as e:  # unpicklable verifier or arguments
            return error_result(f"{name} could not be sent to a worker process: {e}", traceback.format_exc()), False

    @staticmethod
    def _kill_child(proc, conn) -> None:
        if proc.is_alive():
            proc.kill()
        proc.join()
        conn.close()
        proc.close()
