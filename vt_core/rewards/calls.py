"""One verifier call as the reward scorer (vt_core.rewards.scorer) runs it: the call itself, the results
that stand for its failures (an exception, a wrong return value, a timeout: infrastructure failures, never
rewards), the queued job and the loop of a process-mode worker."""

from __future__ import annotations

import concurrent.futures as cf
import os
import traceback
from typing import Callable

from vt_core.rewards.base import RewardResult

CHILD_STARTUP_TIMEOUT_S = 120.0  # spawning a child and importing a verifier's module (not timed per call)


def describe(fn: Callable) -> str:
    """The verifier's name in failure reasons."""
    return getattr(fn, "__qualname__", None) or type(fn).__name__


class GroupCall:
    """A group verifier (``fn(problem, completions) -> list[RewardResult]``) queued as one job; the scorer
    splits its list over the completions' futures (a failure or timeout of the call hits them all)."""

    def __init__(self, fn: Callable, size: int):
        self.fn, self.size = fn, size
        self.__qualname__ = describe(fn)

    def __call__(self, problem: dict, completions: list) -> list:
        return self.fn(problem, completions)


def run_verifier(fn: Callable, problem: dict, completion) -> RewardResult | list[RewardResult]:
    """Call ``fn``; an exception (or a non-RewardResult) becomes an infrastructure failure with the reason
    recorded. A GroupCall returns one RewardResult per completion (the error result for each when the call
    fails)."""
    if isinstance(fn, GroupCall):
        try:
            results = fn(problem, completion)
        except Exception as e:  # as below: one failing group costs its rewards, not the scorer
            return error_result(f"{describe(fn)} raised {type(e).__name__}: {e}", traceback.format_exc())
        if not (isinstance(results, list) and len(results) == fn.size
                and all(isinstance(r, RewardResult) for r in results)):
            return error_result(f"{describe(fn)} did not return {fn.size} RewardResults")
        return results
    try:
        result = fn(problem, completion)
    except Exception as e:  # a crashing verifier must cost one reward, not the scorer; the reason is kept
        return error_result(f"{describe(fn)} raised {type(e).__name__}: {e}", traceback.format_exc())
    if not isinstance(result, RewardResult):
        return error_result(f"{describe(fn)} returned {type(result).__name__}, not RewardResult")
    return result


def error_result(reason: str, tb: str = "") -> RewardResult:
    """The infrastructure-failure result of a verifier call that failed for ``reason``."""
    return RewardResult(0.0, reasons=[reason], extra={"error": True, "traceback": tb}, infra_error=reason)


def timeout_result(fn: Callable, timeout_s: float) -> RewardResult:
    """The infrastructure-failure result of a call of ``fn`` that ran past ``timeout_s``."""
    reason = f"{describe(fn)} timed out after {timeout_s:g} s"
    return RewardResult(0.0, reasons=[reason], extra={"timed_out": True}, infra_error=reason)


def child_main(conn) -> None:
    """Process-mode worker. Messages: ("load", fn) -> "loaded" (imports fn's module, untimed);
    ("run", problem, completion) -> RewardResult of the loaded fn; None stops it."""
    os.environ["VT_REWARDS_INLINE"] = "1"
    conn.send("ready")
    fn = None
    while True:
        msg = conn.recv()
        if msg is None:
            return
        if msg[0] == "load":
            fn = msg[1]
            conn.send("loaded")
        else:
            conn.send(run_verifier(fn, msg[1], msg[2]))


class Job:
    """One queued verifier call and the future its result resolves."""

    __slots__ = ("future", "fn", "problem", "completion")

    def __init__(self, future: cf.Future, fn: Callable, problem: dict, completion):
        self.future, self.fn, self.problem, self.completion = future, fn, problem, completion

    @property
    def scale(self) -> int:
        """Completions in the job: a group job gets that many times the per-call timeout."""
        return self.fn.size if isinstance(self.fn, GroupCall) else 1


__all__ = ["CHILD_STARTUP_TIMEOUT_S", "GroupCall", "Job", "child_main", "describe", "error_result", "run_verifier",
           "timeout_result"]
