"""Code rewards: run the completion's program against tests in the sandbox; reward 1 iff all pass.

The program and the test inputs go into one sandbox run, driven by code_harness.py; expected outputs
stay in this process, which compares each result line as it arrives (and stops the run at the first
failure when asked). Exiting early, printing PASS, patching builtins or returning an object whose
``__eq__`` is always true therefore earns nothing: only the program's stdout, or the JSON value of what
the function returned, is compared. Registered as the "code" verifier.

A failure of the sandbox or the harness (setup failed, the harness did not start or crashed, a program
of a group never ran) is not a reward: its RewardResult has ``infra_error`` set (see ``_Launch``) and is
never cached. Running without OS isolation available raises SandboxUnavailable.
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


class _Verdicts:
    """Per-test statuses and reasons of one program, built from the sandbox's result lines."""

    def __init__(self, suite: TestSuite, cfg: CodeRewardConfig):
        self.suite, self.cfg = suite, cfg
        self.statuses: list[str] = []
        self.reasons: list[str] = []
        self.stopped = False

    def add(self, rec: dict) -> bool:
        """Record the line of the next test; returns whether the program's run should go on (after a
        False, later lines of this program are ignored, as if the run had been stopped there)."""
        if self.stopped:
            return False
        self.stopped = not self._add(rec)
        return not self.stopped

    def _add(self, rec: dict) -> bool:
        i, suite = len(self.statuses), self.suite
        if rec.get("i") != i or i >= len(suite):
            self.statuses.append("protocol")
            return False
        if rec.get("status") != "ok":
            self.statuses.append(str(rec.get("status")))
            self.reasons.append(f"test {i}: {rec.get('status')} {rec.get('error', '')}".rstrip())
        else:
            out = rec.get("out")
            ok = isinstance(out, str) and (
                stdout_matches(out, suite.outputs[i], self.cfg.float_tol)
                if suite.kind == "stdin"
                else return_matches(out, suite.outputs[i], self.cfg.float_tol)
            )
            self.statuses.append("passed" if ok else "wrong_answer")
            if not ok:
                self.reasons.append(f"test {i}: wrong answer")
        return self.statuses[-1] == "passed" or not self.cfg.stop_on_first_failure

    @property
    def judged(self) -> bool:
        """Whether the lines so far decide the reward: every test passed, or one failed by the program's
        own doing (later tests cannot make the reward 1)."""
        if "protocol" in self.statuses:
            return False
        return len(self.statuses) == len(self.suite) or any(st != "passed" for st in self.statuses)

    def result(self, res, infra_error: str = "") -> RewardResult:
        """The program's RewardResult; ``infra_error`` (the run ended before the program was judged, and
        not by its doing) makes it an infrastructure failure instead of a reward."""
        total, passed = len(self.suite), self.statuses.count("passed")
        reasons = list(self.reasons)
        if infra_error:
            reasons = [infra_error]
        elif not self.judged:
            reasons.append(f"sandbox run ended ({res.status}) after {len(self.statuses)} of {total} tests")
        return RewardResult(
            reward=0.0 if infra_error else float(passed == total and total > 0),
            passed=passed,
            total=total,
            reasons=reasons,
            extra={"statuses": self.statuses, "sandbox_status": res.status, "wall_s": res.wall_s,
                   "stderr": res.stderr[-2000:]},
            infra_error=infra_error,
        )


class _Launch:
    """The result lines of one sandbox launch of the harness (code_harness.py), one _Verdicts per
    program, and who is to blame when the launch ends before every program is judged.

    A program's own failure (wrong answer, exception, timeout, memory, output flood, killing the harness)
    is its reward. An infrastructure failure is not: the launcher's setup failed, the harness never said
    it started, it reported its own failure, it sent a malformed line, or it exited cleanly without
    judging every program. In group mode the first unjudged program is the one that was running when the
    launch ended (its failure); the programs after it never ran, so theirs is an infrastructure failure.
    """

    def __init__(self, verdicts: list[_Verdicts], group: bool):
        self.verdicts, self.group = verdicts, group
        self.started = False
        self.current = 0
        self.harness_error = ""

    def on_line(self, line: bytes) -> bool:
        """Route one result line; False stops the run."""
        rec = _parse(line)
        if not self.started:
            self.started = rec == {"ready": True}
            if not self.started:
                self.harness_error = f"the test harness sent {line[:200]!r} instead of its start line"
            return self.started
        if "infra" in rec:  # the harness exits right after: let it print its traceback
            self.harness_error = str(rec["infra"])
            return True
        if not self.group:
            return self.verdicts[0].add(rec)
        j = rec.pop("c", None)
        if not isinstance(j, int) or not self.current <= j < len(self.verdicts):
            self.harness_error = f"the test harness sent a malformed group line {line[:200]!r}"
            return False
        self.current = j
        self.verdicts[j].add(rec)
        return True

    def _infra_cause(self, res) -> str:
        """Why the launch failed as infrastructure ("" when an unjudged program ended it)."""
        if res.details.get("setup_failed"):
            return f"sandbox setup failed: {res.stderr.splitlines()[0]}"
        if self.harness_error:
            return self.harness_error
        if not self.started:
            return (f"the test harness did not start (sandbox status {res.status}, exit code {res.returncode}): "
                    f"{res.stderr.strip()[-500:] or 'no stderr'}")
        if res.status == "ok":
            return "the test harness exited without reporting every test"
        return ""

    def results(self, res) -> list[RewardResult]:
        cause, blamed, out = self._infra_cause(res), False, []
        for v in self.verdicts:
            infra = ""
            if "protocol" in v.statuses:
                infra = f"the test harness sent a malformed result line for test {len(v.statuses) - 1}"
            elif not v.judged:
                if cause:
                    infra = cause
                elif blamed:
                    infra = (f"not run: the sandbox launch ended ({res.status}) while an earlier program "
                             "of its group ran")
                blamed = True
            out.append(v.result(res, infra))
        return out


def _parse(line: bytes) -> dict:
    try:
        rec = json.loads(line)
    except ValueError:
        return {}
    return rec if isinstance(rec, dict) else {}


def _spec(suite: TestSuite, cfg: CodeRewardConfig, **extra: Any) -> bytes:
    return json.dumps({"kind": suite.kind, "inputs": suite.inputs, "fn_name": suite.fn_name,
                       "per_test_s": cfg.per_test_time_s, **extra}).encode()


def run_tests(code: str, suite: TestSuite, cfg: CodeRewardConfig) -> RewardResult:
    """Run ``code`` against every test of ``suite`` in one sandbox run and compare in this process."""
    launch = _Launch([_Verdicts(suite, cfg)], group=False)
    time_limit = min(cfg.total_time_s, len(suite) * (cfg.per_test_time_s + 0.5) + _STARTUP_S)
    res = run_python(
        _HARNESS,
        time_limit_s=time_limit,
        memory_mb=cfg.memory_mb,
        files={"solution.py": code.encode(), "tests.json": _spec(suite, cfg)},
        on_result_line=launch.on_line,
        limits=Limits(max_processes=32),
    )
    return launch.results(res)[0]


def run_tests_group(codes: list[str], suite: TestSuite, cfg: CodeRewardConfig) -> list[RewardResult]:
    """Run several programs against the same tests in ONE sandbox launch (the harness's group mode: one
    program after another, with every process killed and the writable tree emptied in between), and
    compare each program's results here. Results equal those of one ``run_tests`` per program (with
    stop_on_first_failure, lines after a program's first failure are ignored); only the start-up cost is
    shared. The time limit is the sum of the per-program limits."""
    launch = _Launch([_Verdicts(suite, cfg) for _ in codes], group=True)
    per_program = min(cfg.total_time_s, len(suite) * (cfg.per_test_time_s + 0.5))
    files = {f"solution_{j}.py": code.encode() for j, code in enumerate(codes)}
    files["tests.json"] = _spec(suite, cfg, candidates=len(codes))
    res = run_python(
        _HARNESS,
        time_limit_s=len(codes) * per_program + _STARTUP_S,
        memory_mb=cfg.memory_mb,
        files=files,
        on_result_line=launch.on_line,
        limits=Limits(max_processes=32),
    )
    return launch.results(res)


def _settings(tests: Any, fn_name: str | None, config: CodeRewardConfig | None,
              overrides: dict) -> tuple[CodeRewardConfig, TestSuite]:
    """The effective config and the (capped) test suite of a code_reward / code_reward_group call."""
    cfg = CodeRewardConfig(**{**(config.__dict__ if config else {}), **overrides})
    suite = parse_tests(tests, fn_name) if not isinstance(tests, TestSuite) else tests
    if len(suite) == 0:
        raise ValueError("no tests to run")
    return cfg, suite.head(cfg.max_tests)


def _known(completion: str, suite: TestSuite, cfg: CodeRewardConfig) -> tuple[str | None, RewardResult | None]:
    """(program, result known without running it): no code block, or a cache hit; else (program, None)."""
    code = extract_code(completion, cfg.block, cfg.languages)
    if code is None or not code.strip():
        return None, RewardResult(reward=0.0, passed=0, total=len(suite), reasons=["no code block found"],
                                  extra={"code": None, "cached": False})
    hit = CACHE.get(_cache_key(code, suite, cfg)) if cfg.cache_size > 0 else None
    if hit is not None:
        hit.extra["cached"] = True
    return code, hit


def _record(code: str, result: RewardResult, suite: TestSuite, cfg: CodeRewardConfig) -> RewardResult:
    """Note the program on its result and cache it (never an infrastructure failure: the next try may work)."""
    result.extra.update(code=code, cached=False)
    if cfg.cache_size > 0 and not result.is_infra:
        CACHE.put(_cache_key(code, suite, cfg), result, cfg.cache_size)
    return result


def code_reward(completion: str, tests: Any, fn_name: str | None = None, config: CodeRewardConfig | None = None,
                **overrides: Any) -> RewardResult:
    """Reward of ``completion`` on ``tests`` (any format of code_formats.parse_tests).

    Returns RewardResult(reward 1.0 iff every test passes, passed, total, reasons, extra with the per-test
    statuses, the extracted code and whether the result came from the cache). ``overrides`` set fields
    of ``config`` (e.g. ``per_test_time_s=2``).
    """
    cfg, suite = _settings(tests, fn_name, config, overrides)
    code, known = _known(completion, suite, cfg)
    if known is not None:
        return known
    return _record(code, run_tests(code, suite, cfg), suite, cfg)


def code_reward_group(completions: list[str], tests: Any, fn_name: str | None = None,
                      config: CodeRewardConfig | None = None, **overrides: Any) -> list[RewardResult]:
    """``code_reward`` of each completion, with every program not in the cache run in one sandbox launch
    (``run_tests_group``); duplicates run once. Same rewards as one ``code_reward`` call per completion."""
    cfg, suite = _settings(tests, fn_name, config, overrides)
    out: list[RewardResult | None] = [None] * len(completions)
    todo: dict[str, list[int]] = {}
    for k, completion in enumerate(completions):
        code, out[k] = _known(completion, suite, cfg)
        if out[k] is None:
            todo.setdefault(code, []).append(k)
    codes = list(todo)
    for code, result in zip(codes, run_tests_group(codes, suite, cfg) if codes else []):
        _record(code, result, suite, cfg)
        for k in todo[code]:
            out[k] = copy.deepcopy(result)
    return out


def _problem_config(problem: dict) -> CodeRewardConfig:
    return CodeRewardConfig(**problem.get("code_reward", {}))


def score(problem: dict, completion: str) -> RewardResult:
    """The "code" verifier: tests from the problem row (see code_formats.problem_tests); an optional
    ``problem["code_reward"]`` dict overrides CodeRewardConfig fields. When the prompt ends with the start
    of the answer (HumanEval style, e.g. an open fence and a function header), ``problem["response_prefix"]``
    holds that text and the verifier scores prefix + completion."""
    completion = problem.get("response_prefix", "") + completion
    return code_reward(completion, problem_tests(problem), config=_problem_config(problem))


def score_group(problem: dict, completions: list[str]) -> list[RewardResult]:
    """``score`` of each completion of one problem (e.g. a GRPO group), in one sandbox launch."""
    prefix = problem.get("response_prefix", "")
    return code_reward_group([prefix + c for c in completions], problem_tests(problem), config=_problem_config(problem))


register_verifier("code", score, group=score_group)
