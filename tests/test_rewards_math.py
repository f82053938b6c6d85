"""Math verifier: extraction (boxed, nested, think tags), math-verify equivalence, timeouts from threads/processes."""

import multiprocessing as mp
import threading
import time

import pytest

from vt_core.rewards import score
from vt_core.rewards.math_verifier import answer_region, extract_boxed, math_reward, worker_pool

HANG = r"The answer is \boxed{9^{9^{9^{9}}}}"  # sympy evaluates this tower forever


def test_answer_region():
    assert answer_region("plain 3") == "plain 3"
    assert answer_region("<think>a</think> b <think>c</think> final") == " final"
    assert answer_region("<think>still thinking \\boxed{3}") is None


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so \boxed{3}", "3"),
        (r"\boxed{1} then \boxed{2}", "2"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\left\{1, \{2\}\right\}}", r"\left\{1, \{2\}\right\}"),
        (r"\boxed{\boxed{7}}", "7"),
        (r"\fbox{ x+1 }", "x+1"),
        (r"\boxed {4}", "4"),
        (r"\boxed{5} and an unclosed \boxed{6", "5"),
        ("no box here", None),
        (r"\boxed{\}}", r"\}"),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "gold, completion",
    [
        ("1/2", r"\boxed{0.5}"),
        (r"\frac{1}{2}", r"\boxed{1/2}"),
        ("0.5", r"\boxed{\frac12}"),
        (r"\frac{\sqrt{2}}{2}", r"\boxed{\sqrt{2}/2}"),
        ("[1,2)", r"\boxed{[1, 2)}"),
        (r"\{1,3\}", r"\boxed{\{3,1\}}"),
        ("1000", r"\boxed{1,000}"),
        ("x=2", r"\boxed{2}"),
        (3, r"\boxed{3}"),
        (["4", "-4"], r"\boxed{-4}"),
        ("2", r"<think>maybe \boxed{5}</think> Final: \boxed{2}"),
        ("2", r"<think>\boxed{5}</think> The final answer is $2$."),
    ],
)
def test_equivalent_answers_score_1(gold, completion):
    r = math_reward(completion, gold)
    assert r.reward == 1.0 and (r.passed, r.total) == (1, 1) and r.reasons == []


@pytest.mark.parametrize(
    "gold, completion, reason",
    [
        ("1/2", r"\boxed{0.51}", "not equivalent"),
        ("(1,2]", r"\boxed{(1,2)}", "not equivalent"),
        ("3", r"<think>the answer is \boxed{3}", "unclosed <think>"),
        ("3", r"<think>\boxed{3}</think> oops \boxed{4}", "not equivalent"),
        ("3", "the answer is 3", "no \\boxed{}"),
    ],
)
def test_wrong_answers_score_0(gold, completion, reason):
    r = math_reward(completion, gold)
    assert r.reward == 0.0 and r.passed == 0 and r.total == 1
    assert reason in r.reasons[0]


def test_registry_entry_and_missing_gold():
    assert score({"domain": "math", "answer": "2"}, r"\boxed{2}").reward == 1.0
    with pytest.raises(KeyError, match="answer"):
        score({"domain": "math"}, r"\boxed{2}")
    with pytest.raises(ValueError, match="empty gold"):
        math_reward(r"\boxed{2}", "  ")


def test_timeout_in_a_thread_keeps_the_pool_usable():
    out = {}
    worker_pool().check(["\\boxed{1}"], "\\boxed{1}", 60.0)  # pay worker start-up outside the timed call
    t = threading.Thread(target=lambda: out.update(r=math_reward(HANG, "2", timeout_s=1.0), t=time.monotonic()))
    start = time.monotonic()
    t.start()
    t.join(30)
    assert not t.is_alive()
    assert out["r"].reward == 0.0 and "timed out after 1 s" in out["r"].reasons[0]
    assert out["t"] - start < 15
    assert math_reward(r"\boxed{2}", "2").reward == 1.0  # a fresh worker replaced the killed one


def _score_in_child(queue):
    queue.put((math_reward(HANG, "2", timeout_s=1.0).reasons, math_reward(r"\boxed{0.25}", "1/4").reward))


def test_timeout_in_a_daemonic_worker_process():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_score_in_child, args=(queue,), daemon=True)
    proc.start()
    reasons, ok = queue.get(timeout=60)
    proc.join(30)
    assert proc.exitcode == 0
    assert "timed out" in reasons[0] and ok == 1.0


def test_inline_mode_runs_without_worker(monkeypatch):
    monkeypatch.setenv("VT_REWARDS_INLINE", "1")
    assert math_reward(r"\boxed{2/4}", "1/2").reward == 1.0
    assert math_reward(r"\boxed{3}", "1/2", timeout_s=None).reward == 0.0
