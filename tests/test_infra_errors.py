"""Infrastructure failures are never rewards (issue 14): a failing sandbox launch, a crashing or silent test
harness, a crashing or hanging verifier each give a RewardResult with ``infra_error`` set, while a program's
own failures (wrong answer, exception, killing the harness) stay rewards."""

import pytest

from vt_core.rewards import code as code_mod
from vt_core.rewards.base import RewardResult
from vt_core.rewards.code import CACHE, code_reward, code_reward_group
from vt_core.rewards.registry import register_verifier, unregister_verifier
from vt_core.rewards.scorer import RewardScorer
from vt_core.sandbox import isolation, runner

FAST = {"per_test_time_s": 2.0, "total_time_s": 10.0, "cache_size": 0}
TESTS = {"inputs": ["1 2"], "outputs": ["3"]}
RIGHT = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
WRONG = "```python\na, b = map(int, input().split())\nprint(a - b)\n```"
KILLER = "```python\nimport os, signal\nos.kill(2, signal.SIGKILL)\n```"


@pytest.fixture(scope="module", autouse=True)
def _needs_isolation():
    iso = isolation()
    if not iso.active:
        pytest.fail(f"sandbox isolation is not available here: {iso.reason}")


def test_program_failures_are_rewards():
    group = code_reward_group([RIGHT, WRONG, "```python\nraise ValueError\n```"], TESTS, **FAST)
    assert [(r.reward, r.infra_error) for r in group] == [(1.0, ""), (0.0, ""), (0.0, "")]


def test_a_program_killing_the_harness_is_its_own_failure_and_the_rest_of_its_group_is_infra():
    single = code_reward(KILLER, TESTS, **FAST)
    assert single.reward == 0.0 and not single.is_infra
    group = code_reward_group([RIGHT, KILLER, RIGHT.replace("a + b", "b + a")], TESTS, **FAST)
    assert [r.reward for r in group] == [1.0, 0.0, 0.0]
    assert [r.is_infra for r in group] == [False, False, True]
    assert group[2].infra_error.startswith("not run: the sandbox launch ended")


def test_launcher_setup_failure_is_infra(monkeypatch):
    real = runner._launcher_argv
    monkeypatch.setattr(runner, "_launcher_argv", lambda *a: real(*a)[:1] + ["--bogus", "1"] + real(*a)[1:])
    for r in [code_reward(RIGHT, TESTS, **FAST), *code_reward_group([RIGHT, WRONG], TESTS, **FAST)]:
        assert r.reward == 0.0 and r.infra_error.startswith("sandbox setup failed: vt-sandbox-launcher: bad arguments")


def test_harness_crash_is_infra_with_its_cause(monkeypatch):
    broken = code_mod._HARNESS.replace("def _serve(results):\n",
                                       "def _serve(results):\n    raise OSError(30, 'Read-only file system')\n")
    monkeypatch.setattr(code_mod, "_HARNESS", broken)
    CACHE.clear()
    results = [code_reward(RIGHT, TESTS, cache_size=16), *code_reward_group([RIGHT, WRONG], TESTS, **FAST)]
    for r in results:
        assert r.reward == 0.0 and "test harness failed: OSError: [Errno 30] Read-only file system" in r.infra_error
        assert "Traceback" in r.extra["stderr"]
    monkeypatch.undo()
    assert code_reward(RIGHT, TESTS, cache_size=16).reward == 1.0  # the infra result was not cached


def test_harness_that_never_starts_is_infra(monkeypatch):
    monkeypatch.setattr(code_mod, "_HARNESS", "import sys\nsys.exit('no harness here')\n")
    r = code_reward(RIGHT, TESTS, **FAST)
    assert r.reward == 0.0 and r.infra_error.startswith("the test harness did not start")
    assert "no harness here" in r.infra_error


def test_unexecutable_launcher_raises_and_the_scorer_marks_infra(monkeypatch):
    monkeypatch.setattr(runner, "_launcher_argv", lambda *a: ["/proc/self/not-a-launcher"])
    with pytest.raises(OSError):
        code_reward(RIGHT, TESTS, **FAST)
    problem = {"verifier": "code", "tests": TESTS, "code_reward": FAST}
    with RewardScorer(max_workers=2) as scorer:
        futures = scorer.submit_group(problem, [RIGHT, WRONG]) + [scorer.submit(problem, RIGHT)]
        results = [f.result() for f in futures]
    assert all(r.reward == 0.0 and "FileNotFoundError" in r.infra_error for r in results)


def test_crashing_and_hanging_verifiers_are_infra():
    import time

    def crash(problem, completion):
        raise RuntimeError("verifier bug")

    def hang(problem, completion):
        time.sleep(2.0)
        return RewardResult(1.0)

    def wrong_type(problem, completion):
        return 1.0

    register_verifier("test-crash", crash)
    register_verifier("test-hang", hang)
    register_verifier("test-type", wrong_type)
    try:
        with RewardScorer(max_workers=3, timeout_s=0.3) as scorer:
            got = [scorer.submit({"verifier": v}, "x").result() for v in ("test-crash", "test-hang", "test-type")]
    finally:
        for v in ("test-crash", "test-hang", "test-type"):
            unregister_verifier(v)
    assert all(r.reward == 0.0 and r.is_infra for r in got)
    assert "raised RuntimeError: verifier bug" in got[0].infra_error
    assert "timed out after 0.3 s" in got[1].infra_error
    assert "returned float" in got[2].infra_error


def test_math_worker_death_is_infra(monkeypatch):
    from vt_core.rewards import math_verifier as mv

    pool = mv.MathWorkerPool(max_workers=1)
    monkeypatch.setattr(mv, "worker_pool", lambda: pool)
    monkeypatch.setattr(mv, "_Worker", lambda memory_mb: (_ for _ in ()).throw(mv._WorkerDied("exited (code 1)")))
    r = mv.math_reward("\\boxed{2}", "2")
    assert r.reward == 0.0 and r.infra_error == "math verification crashed: exited (code 1)"


# ---- counting and stopping: the RL step and the evaluation ---------------------------------------

def test_check_infra_counts_and_stops_above_half():
    from vt_core.rewards.infra import InfrastructureFailure, check_infra

    cause = ("sandbox setup failed: vt-sandbox-launcher: unshare: Operation not permitted", "the stderr")
    assert check_infra([None, cause, None, cause], "RL step 3") == 0.5
    with pytest.raises(InfrastructureFailure, match=r"RL step 3: 3 of 4 rewards .*unshare: Operation not permitted"
                                                    r"\nits stderr: the stderr"):
        check_infra([cause, cause, None, cause], "RL step 3")


class _ScriptedEngine:
    def __init__(self, texts):
        self.texts = texts

    def generate(self, prompts, params, n=1):
        from vt_core.generation import Completion

        return [[Completion(token_ids=[1], text=t) for t in row] for row in self.texts]


class _Tok:
    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(ch) % 50 for ch in text]}


def test_evaluate_reports_infra_error_frac_and_stops_above_half():
    from vt_core.eval import evaluate, format_table
    from vt_core.rewards.infra import InfrastructureFailure

    def flaky(problem, completion):
        if completion == "crash":
            raise OSError(30, "Read-only file system")
        return RewardResult(float(completion == "right"))

    register_verifier("test-flaky", flaky)
    try:
        problems = [{"prompt": "p", "verifier": "test-flaky"}]
        res = evaluate(_ScriptedEngine([["right", "crash", "wrong", "right"]]), _Tok(), problems, k=4, ks=(1,))
        assert res["rewards"] == [[1.0, 0.0, 0.0, 1.0]] and res["infra_error_frac"] == 0.25
        assert res["infra"][0][1][0].endswith("flaky raised OSError: [Errno 30] Read-only file system")
        assert "25.0%" in format_table({"set": res}, ks=(1,))
        with pytest.raises(InfrastructureFailure, match="3 of 4 rewards.*Read-only file system"):
            evaluate(_ScriptedEngine([["crash", "crash", "right", "crash"]]), _Tok(), problems, k=4, ks=(1,))
    finally:
        unregister_verifier("test-flaky")
