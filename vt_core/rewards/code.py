"""Code rewards: run the completion's program against tests in the sandbox; reward 1 iff all pass.

The program and the test inputs go into one sandbox run, driven by code_harness.py; expected outputs
stay in this process, which compares each result line as it arrives (and stops the run at the first
failure when asked). Exiting early, printing PASS, patching builtins or returning an object whose
``__eq__`` is always true therefore earns nothing: only the program's stdout, or the JSON value of what
the function returned, is compared. Registered as the "code" verifier.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vt_core.rewards.base import RewardResult
from vt_core.rewards.code_formats import (
    PYTHON_TAGS,
    TestSuite,
    extract_code,
    parse_tests,
    problem_tests,
    return_matches,
    stdout_matches,
)
from vt_core.rewards.registry import register_verifier
from vt_core.sandbox import Limits, run_python

_HARNESS = (Path(__file__).with_name("code_harness.py")).read_text()
# Seconds granted on top of the per-test limits for interpreter start-up and the harness itself.
_STARTUP_S = 2.0


@dataclass
class CodeRewardConfig:
    """Settings of the code verifier.

    block: which fenced block holds the program ("last", "first", or "none" = the whole completion).
    languages: fence tags accepted as Python ("" = untagged fences).
    per_test_time_s: wall-clock limit for one test (the harness kills the test's process group).
    total_time_s: wall-clock limit for the whole run (all tests, start-up included).
    memory_mb: address-space limit per process.
    max_tests: only the first max_tests tests run (a cap per problem).
    stop_on_first_failure: kill the run at the first failing test (the reward is binary anyway; passed
        then counts the tests before the failure, so the fraction is a lower bound).
    float_tol: absolute/relative tolerance for numbers in outputs.
    cache_size: entries of the (code, tests, settings) -> result cache; 0 disables it.
    """

    block: str = "last"
    languages: tuple[str, ...] = PYTHON_TAGS
    per_test_time_s: float = 6.0
    total_time_s: float = 60.0
    memory_mb: int = 1024
    max_tests: int = 64
    stop_on_first_failure: bool = True
    float_tol: float = 1e-6
    cache_size: int = 4096


class _Cache:
    """Thread-safe LRU of RewardResults keyed by a digest of (code, tests, settings)."""

    def __init__(self):
        self._data: OrderedDict[str, RewardResult] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> RewardResult | None:
        with self._lock:
            hit = self._data.get(key)
            if hit is not None:
                self._data.move_to_end(key)
            return copy.deepcopy(hit)

    def put(self, key: str, value: RewardResult, size: int) -> None:
        with self._lock:
            self._data[key] = copy.deepcopy(value)
            self._data.move_to_end(key)
            while len(self._data) > size:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


CACHE = _Cache()


def _cache_key(code: str, suite: TestSuite, cfg: CodeRewardConfig) -> str:
    blob = json.dumps([code, suite.kind, suite.inputs, suite.outputs, suite.fn_name, cfg.per_test_time_s,
                       cfg.total_time_s, cfg.memory_mb, cfg.stop_on_first_failure, cfg.float_tol], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def run_tests(code: str, suite: TestSuite, cfg: CodeRewardConfig) -> RewardResult:
    """Run ``code`` against every test of ``suite`` in one sandbox run and compare in this process."""
    total = len(suite)
    statuses: list[str] = []
    reasons: list[str] = []

    def on_line(line: bytes) -> bool:
        i = len(statuses)
        try:
            rec = json.loads(line)
        except ValueError:
            rec = {}
        if not isinstance(rec, dict) or rec.get("i") != i or i >= total:
            statuses.append("protocol")
            reasons.append(f"test {i}: malformed result from the sandbox")
            return False
        if rec.get("status") != "ok":
            statuses.append(str(rec.get("status")))
            reasons.append(f"test {i}: {rec.get('status')} {rec.get('error', '')}".rstrip())
        else:
            out = rec.get("out")
            ok = isinstance(out, str) and (
                stdout_matches(out, suite.outputs[i], cfg.float_tol)
                if suite.kind == "stdin"
                else return_matches(out, suite.outputs[i], cfg.float_tol)
            )
            statuses.append("passed" if ok else "wrong_answer")
            if not ok:
                reasons.append(f"test {i}: wrong answer")
        return statuses[-1] == "passed" or not cfg.stop_on_first_failure

    spec = {"kind": suite.kind, "inputs": suite.inputs, "fn_name": suite.fn_name, "per_test_s": cfg.per_test_time_s}
    time_limit = min(cfg.total_time_s, total * (cfg.per_test_time_s + 0.5) + _STARTUP_S)
    res = run_python(
        _HARNESS,
        time_limit_s=time_limit,
        memory_mb=cfg.memory_mb,
        files={"solution.py": code.encode(), "tests.json": json.dumps(spec).encode()},
        on_result_line=on_line,
        limits=Limits(max_processes=32),
    )
    passed = statuses.count("passed")
    if len(statuses) < total and not reasons:
        reasons.append(f"sandbox run ended ({res.status}) after {len(statuses)} of {total} tests")
    return RewardResult(
        reward=float(passed == total and total > 0),
        passed=passed,
        total=total,
        reasons=reasons,
        extra={"statuses": statuses, "sandbox_status": res.status, "wall_s": res.wall_s,
               "stderr": res.stderr[-2000:]},
    )


def code_reward(completion: str, tests: Any, fn_name: str | None = None, config: CodeRewardConfig | None = None,
                **overrides: Any) -> RewardResult:
    """Reward of ``completion`` on ``tests`` (any format of code_formats.parse_tests).

    Returns RewardResult(reward 1.0 iff every test passes, passed, total, reasons, extra with the per-test
    statuses, the extracted code and whether the result came from the cache). ``overrides`` set fields
    of ``config`` (e.g. ``per_test_time_s=2``).
    """
    cfg = CodeRewardConfig(**{**(config.__dict__ if config else {}), **overrides})
    suite = parse_tests(tests, fn_name) if not isinstance(tests, TestSuite) else tests
    if len(suite) == 0:
        raise ValueError("no tests to run")
    suite = suite.head(cfg.max_tests)
    code = extract_code(completion, cfg.block, cfg.languages)
    if code is None or not code.strip():
        return RewardResult(reward=0.0, passed=0, total=len(suite), reasons=["no code block found"],
                            extra={"code": None, "cached": False})
    key = _cache_key(code, suite, cfg)
    if cfg.cache_size > 0:
        hit = CACHE.get(key)
        if hit is not None:
            hit.extra["cached"] = True
            return hit
    result = run_tests(code, suite, cfg)
    result.extra.update(code=code, cached=False)
    if cfg.cache_size > 0:
        CACHE.put(key, result, cfg.cache_size)
    return result


def score(problem: dict, completion: str) -> RewardResult:
    """The "code" verifier: tests from the problem row (see code_formats.problem_tests); an optional
    ``problem["code_reward"]`` dict overrides CodeRewardConfig fields."""
    return code_reward(completion, problem_tests(problem), config=CodeRewardConfig(**problem.get("code_reward", {})))


register_verifier("code", score)
