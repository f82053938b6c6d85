"""Verifier registry (names, dispatch, lazy imports) and RewardScorer (overlap, errors, timeouts, shutdown)."""

import os
import subprocess
import sys
import textwrap
import time

import pytest

from vt_core.rewards import RewardResult, get_verifier, known_verifiers, register_verifier, score
from vt_core.rewards import registry
from vt_core.rewards.scorer import RewardScorer


# ---------------------------------------------------------------- module-level verifiers (picklable)


def echo_verifier(problem, completion):
    time.sleep(problem.get("sleep", 0.0))
    return RewardResult(float(completion == problem["answer"]), extra={"pid": os.getpid(), "t": time.monotonic()})


def raising_verifier(problem, completion):
    raise RuntimeError("verifier blew up")


def hanging_verifier(problem, completion):
    time.sleep(60)  # far beyond the 1 s timeout; an abandoned thread ends on its own later


def exiting_verifier(problem, completion):
    os._exit(7)


def wrong_type_verifier(problem, completion):
    return 1.0


GROUP_CALLS: list[int] = []


def echo_group(problem, completions):
    GROUP_CALLS.append(len(completions))
    return [echo_verifier(problem, c) for c in completions]


def raising_group(problem, completions):
    raise RuntimeError("group blew up")


@pytest.fixture
def temp_verifier():
    names = []

    def add(name, fn, **kw):
        names.append(name)
        return register_verifier(name, fn, **kw)

    yield add
    for name in names:
        registry._VERIFIERS.pop(name, None)
        registry._GROUP_VERIFIERS.pop(name, None)


# ---------------------------------------------------------------- registry


def test_register_call_and_decorator(temp_verifier):
    temp_verifier("t_echo", echo_verifier)
    assert get_verifier("t_echo") is echo_verifier

    @register_verifier("t_yes")
    def yes(problem, completion):
        return RewardResult(1.0)

    try:
        assert score({"verifier": "t_yes"}, "anything").reward == 1.0
    finally:
        registry.unregister_verifier("t_yes")
    assert "t_yes" not in known_verifiers()


def test_name_resolution_order(temp_verifier):
    temp_verifier("t_echo", echo_verifier)
    temp_verifier("t_raise", raising_verifier)
    problem = {"verifier": "t_echo", "domain": "t_raise", "answer": "a"}
    assert score(problem, "a").reward == 1.0  # problem["verifier"] beats problem["domain"]
    with pytest.raises(RuntimeError, match="blew up"):
        score(problem, "a", verifier="t_raise")  # the argument beats both
    with pytest.raises(RuntimeError, match="blew up"):
        score({"domain": "t_raise"}, "a")
    with pytest.raises(KeyError, match="neither a 'verifier' nor a 'domain'"):
        score({"answer": "a"}, "a")


def test_unknown_name_lists_known_verifiers():
    with pytest.raises(KeyError, match=r"unknown verifier 'nope'; known verifiers: .*instruct, math, stem"):
        get_verifier("nope")
    assert {"code", "math", "stem", "instruct"} <= set(known_verifiers())


def test_duplicate_names_need_overwrite(temp_verifier):
    temp_verifier("t_dup", echo_verifier)
    temp_verifier("t_dup", echo_verifier)  # same function again (a module reload): fine
    with pytest.raises(ValueError, match="already registered"):
        register_verifier("t_dup", raising_verifier)
    with pytest.raises(ValueError, match="already registered"):
        register_verifier("t_dup", lambda p, c: RewardResult(0.0))
    temp_verifier("t_dup", raising_verifier, overwrite=True)
    assert get_verifier("t_dup") is raising_verifier
    with pytest.raises(ValueError, match="non-empty string"):
        register_verifier("", echo_verifier)
    with pytest.raises(TypeError, match="callable"):
        register_verifier("t_bad", 3)


def test_builtins_are_imported_lazily(tmp_path):
    """A fresh interpreter: importing the package imports no verifier; a lookup imports only its module."""
    (tmp_path / "t_lazy_mod.py").write_text(
        textwrap.dedent(
            """
            from vt_core.rewards import RewardResult, register_verifier

            @register_verifier("t_lazy")
            def lazy(problem, completion):
                return RewardResult(2.0)
            """
        )
    )
    script = textwrap.dedent(
        """
        import sys
        import vt_core.rewards as r
        from vt_core.rewards import registry
        mods = lambda: sorted(m for m in sys.modules if m.startswith(("vt_core.rewards.", "vt_core.sandbox", "t_lazy")))
        print(mods())
        r.get_verifier("stem")
        print(mods())
        registry._BUILTIN_MODULES["t_lazy"] = "t_lazy_mod"
        print(r.score({"domain": "t_lazy"}, "").reward, "t_lazy_mod" in sys.modules)
        print(r.get_verifier("code").__module__, "vt_core.sandbox" in sys.modules)
        registry._BUILTIN_MODULES["t_broken"] = "json"
        try:
            r.get_verifier("t_broken")
        except KeyError as e:
            print(e)
        """
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    before, after, lazy, code, broken = out.stdout.strip().splitlines()
    assert before == "['vt_core.rewards.base', 'vt_core.rewards.registry']"
    assert after == str([f"vt_core.rewards.{m}" for m in ("base", "math_verifier", "registry", "stem")])
    assert lazy == "2.0 True"
    assert code == "vt_core.rewards.code True"  # the sandbox is imported only when "code" is looked up
    assert "did not register a verifier named 't_broken'" in broken


# ---------------------------------------------------------------- RewardScorer


def test_scoring_overlaps_with_a_producer():
    """Rewards of early completions are ready while the producer is still submitting later ones."""
    with RewardScorer(max_workers=2, timeout_s=10, verifier=echo_verifier) as scorer:
        submit_times = []
        for i in range(6):
            submit_times.append(time.monotonic())
            scorer.submit({"answer": "a", "sleep": 0.05}, "a" if i % 2 == 0 else "b", key=f"k{i}")
            time.sleep(0.1)  # "generation" of the next completion
        finish_times = {k: r.extra["t"] for k, r in scorer.as_completed(timeout=30)}
    assert finish_times["k0"] < submit_times[-1]  # scored before the last completion existed
    assert scorer.stats["completed"] == 6


def test_results_in_submission_order_and_keys():
    with RewardScorer(max_workers=3, timeout_s=10, verifier=echo_verifier) as scorer:
        for i, sleep in enumerate([0.2, 0.0, 0.1]):
            scorer.submit({"answer": "a", "sleep": sleep}, "a")
        with pytest.raises(ValueError, match="already pending"):
            scorer.submit({"answer": "a"}, "a", key=0)
        results = scorer.results(timeout=30)
        assert list(results) == [0, 1, 2] and all(r.reward == 1.0 for r in results.values())
        assert scorer.results() == {}
        scorer.submit({"answer": "a"}, "a", key=0)  # collected keys may be reused
        assert scorer.results(timeout=30)[0].reward == 1.0


def test_registry_dispatch_and_unknown_name_fail_at_submit():
    with RewardScorer(max_workers=2, timeout_s=30) as scorer:
        scorer.submit({"domain": "stem", "answer": "C"}, "Answer: (C)", key="stem")
        scorer.submit({"domain": "instruct", "rules": [{"type": "no_commas"}]}, "a, b", key="if")
        with pytest.raises(KeyError, match="unknown verifier"):
            scorer.submit({"domain": "nope"}, "x")
        res = scorer.results(timeout=60)
    assert res["stem"].reward == 1.0 and res["if"].reward == 0.0


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_errors_and_timeouts_never_kill_the_scorer(mode):
    cases = {"ok": echo_verifier, "raise": raising_verifier, "hang": hanging_verifier, "type": wrong_type_verifier}
    if mode == "process":
        cases["exit"] = exiting_verifier
        cases["lambda"] = lambda p, c: RewardResult(1.0)  # cannot be sent to a child process
    start = time.monotonic()
    with RewardScorer(max_workers=2, mode=mode, timeout_s=1.0) as scorer:
        for key, fn in cases.items():
            scorer.submit({"answer": "a"}, "a", key=key, verifier=fn)
        res = scorer.results(timeout=120)
        scorer.submit({"answer": "a"}, "a", key="after", verifier=echo_verifier)  # the pool still works
        assert scorer.results(timeout=120)["after"].reward == 1.0
    assert res["ok"].reward == 1.0
    assert res["raise"].reward == 0.0
    assert res["raise"].reasons == ["raising_verifier raised RuntimeError: verifier blew up"]
    assert "RuntimeError" in res["raise"].extra["traceback"]
    assert res["hang"].reward == 0.0 and res["hang"].reasons == ["hanging_verifier timed out after 1 s"]
    assert "not RewardResult" in res["type"].reasons[0]
    if mode == "process":
        assert "crashed its worker process (exit code 7)" in res["exit"].reasons[0]
        assert "could not be sent" in res["lambda"].reasons[0]
    assert scorer.stats["timeouts"] == 1 and scorer.stats["replaced_workers"] >= 1
    assert time.monotonic() - start < 60


def test_process_mode_runs_in_other_processes():
    with RewardScorer(max_workers=2, mode="process", timeout_s=60, verifier=echo_verifier) as scorer:
        for i in range(4):
            scorer.submit({"answer": "a"}, "a")
        pids = {r.extra["pid"] for r in scorer.results(timeout=120).values()}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_shutdown_cancels_pending_and_rejects_new_work():
    scorer = RewardScorer(max_workers=1, timeout_s=10, verifier=echo_verifier)
    first = scorer.submit({"answer": "a", "sleep": 0.3}, "a")
    queued = [scorer.submit({"answer": "a"}, "a") for _ in range(3)]
    while not first.running():  # the single worker has taken the first job; the others stay queued
        time.sleep(0.01)
    scorer.shutdown(wait=True, cancel_pending=True)
    assert first.result().reward == 1.0
    assert all(f.cancelled() for f in queued)
    res = scorer.results()
    assert [r.reasons for r in list(res.values())[1:]] == [["cancelled before scoring"]] * 3
    with pytest.raises(RuntimeError, match="shut down"):
        scorer.submit({"answer": "a"}, "a")
    scorer.shutdown()  # idempotent
    assert scorer._threads and not any(t.is_alive() for t in scorer._threads)


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_submit_group_scores_a_group_in_one_call(temp_verifier, mode):
    temp_verifier("echo_g", echo_verifier, group=echo_group)
    temp_verifier("raise_g", echo_verifier, group=raising_group)
    temp_verifier("plain", echo_verifier)
    assert registry.get_group_verifier("echo_g") is echo_group and registry.get_group_verifier("plain") is None
    GROUP_CALLS.clear()
    with RewardScorer(max_workers=2, mode=mode, timeout_s=30) as scorer:
        futures = scorer.submit_group({"verifier": "echo_g", "answer": "a"}, ["a", "b", "a"], keys=["x", "y", "z"])
        failing = scorer.submit_group({"verifier": "raise_g", "answer": "a"}, ["a", "a"])
        plain = scorer.submit_group({"verifier": "plain", "answer": "a"}, ["a", "b"])
        with pytest.raises(ValueError, match="already pending"):
            scorer.submit_group({"verifier": "echo_g", "answer": "a"}, ["a", "b"], keys=["x", "w"])
        res = scorer.results(timeout=60)
    assert [f.result().reward for f in futures] == [1.0, 0.0, 1.0] and [res[k].reward for k in "xyz"] == [1, 0, 1]
    assert all(f.result().reward == 0 and "group blew up" in f.result().reasons[0] for f in failing)
    assert [f.result().reward for f in plain] == [1.0, 0.0] and len(res) == 7
    assert scorer.stats["completed"] == 7
    if mode == "thread":
        assert GROUP_CALLS == [3]  # one call for the whole group (in process mode it ran in the child)


def test_is_correct_is_one_threshold_for_floats_and_tensors():
    import torch

    from vt_core.rewards import CORRECT_THRESHOLD, is_correct

    assert CORRECT_THRESHOLD == 0.5
    assert is_correct(1.0) and not is_correct(0.0) and not is_correct(CORRECT_THRESHOLD)
    assert is_correct(torch.tensor([0.0, 0.5, 0.75, 1.0])).tolist() == [False, False, True, True]
