"""Code rewards: extraction, test formats, comparison, and correct / wrong / crashing programs per format."""

import json

import pytest

from vt_core.rewards import registry
from vt_core.rewards.code import CACHE, CodeRewardConfig, code_reward, code_reward_group, score, score_group
from vt_core.rewards.code_formats import extract_code, parse_tests, problem_tests, return_matches, stdout_matches

FAST = {"per_test_time_s": 2.0, "total_time_s": 10.0}


def fenced(code: str, tag: str = "python") -> str:
    return f"Reasoning...\n```{tag}\n{code}\n```\n"


# ---- pure helpers (no sandbox) ------------------------------------------------------------------

def test_extract_code_last_first_none_and_think():
    text = "```python\nA\n```\nmid\n```py\nB\n```\n```cpp\nC\n```"
    assert extract_code(text) == "B\n" and extract_code(text, "first") == "A\n"
    assert extract_code(text, languages=("cpp",)) == "C\n"
    assert extract_code("<think>```python\nX\n```</think>answer ```python\nY\n```") == "Y\n"
    assert extract_code("<think>```python\nX\n```</think>no code") is None
    assert extract_code("```python\nunclosed") is None
    assert extract_code("print(1)", "none") == "print(1)"
    with pytest.raises(ValueError, match="block"):
        extract_code("x", "middle")


def test_stdout_comparison_like_livecodebench():
    assert stdout_matches("3\n", "3") and stdout_matches("  1 2  \n\n", "1 2")
    assert stdout_matches("0.3333333\n", "0.33333333") and stdout_matches("1e-9", "0")
    assert not stdout_matches("0.34", "0.33") and not stdout_matches("1 2", "1 2 3")
    assert not stdout_matches("1\n2", "1") and not stdout_matches("abc", "abd")
    assert not stdout_matches("1_0", "10") and not stdout_matches("nan", "0")
    assert stdout_matches("1.0000001 x", "1 x", float_tol=1e-6)


def test_return_value_comparison():
    assert return_matches("[1, 2]", [1, 2]) and return_matches("[1, 2]", [[1, 2]])  # APPS wraps in a list
    assert return_matches("0.1", 0.1000000001) and return_matches('{"a": [1.0]}', {"a": [1]})
    assert not return_matches("true", 1) and not return_matches("1", True) and not return_matches("[1]", [1, 2])
    assert not return_matches("not json", 1) and not return_matches('"3"', 3)


def test_parse_formats():
    apps = parse_tests(json.dumps({"inputs": ["1\n", ["2", "3"]], "outputs": ["1\n", ["2", "3"]]}))
    assert (apps.kind, apps.inputs, apps.outputs) == ("stdin", ["1\n", "2\n3"], ["1\n", "2\n3"])
    taco_call = parse_tests({"input_output": json.dumps({"inputs": [[1, 2]], "outputs": [[3]], "fn_name": "f"})})
    assert (taco_call.kind, taco_call.inputs, taco_call.fn_name) == ("call", [[1, 2]], "f")
    lcb = parse_tests([{"input": "[1, 2]\n3", "output": "[1, 2, 3]", "testtype": "functional"}], fn_name="g")
    assert (lcb.kind, lcb.inputs, lcb.outputs) == ("call", [[[1, 2], 3]], [[1, 2, 3]])
    deepcoder = parse_tests([{"input": "5\n", "output": "25\n", "type": "stdin_stdout"}])
    assert deepcoder.kind == "stdin" and deepcoder.outputs == ["25\n"]
    for bad, match in [({"inputs": [1]}, "outputs"), ({"inputs": ["1"], "outputs": []}, "inputs but"),
                       ([{"input": "1", "output": "1", "testtype": "functional"}], "function name"),
                       ([{"input": "1", "output": "1", "testtype": "stdin"},
                         {"input": "1", "output": "1", "testtype": "functional"}], "mix"), (42, "unrecognized")]:
        with pytest.raises(ValueError, match=match):
            parse_tests(bad)


def test_problem_rows():
    lcb_row = {"public_test_cases": json.dumps([{"input": "1\n", "output": "1\n", "testtype": "stdin"}]),
               "private_test_cases": json.dumps([{"input": "2\n", "output": "2\n", "testtype": "stdin"}])}
    assert problem_tests(lcb_row).inputs == ["1\n", "2\n"]
    meta = {"tests": [{"input": "1", "output": "2", "testtype": "functional"}], "metadata": '{"func_name": "inc"}'}
    assert problem_tests(meta).fn_name == "inc"
    with pytest.raises(ValueError, match="compressed"):
        problem_tests({"private_test_cases": "eJzLSM3JyQcABiwCFQ=="})
    with pytest.raises(ValueError, match="no tests"):
        problem_tests({"question": "?"})


# ---- real runs: correct, wrong and crashing programs in every format ------------------------------

STDIN_OK = "a, b = map(int, input().split())\nprint(a + b)"
STDIN_WRONG = "a, b = map(int, input().split())\nprint(a - b)"
STDIN_CRASH = "a, b = map(int, input().split())\nprint(a / 0)"
CASES = {
    "apps_stdin": ({"input_output": json.dumps({"inputs": ["1 2\n", "5 7\n"], "outputs": ["3\n", "12\n"]})}, None,
                   STDIN_OK, STDIN_WRONG, STDIN_CRASH),
    "lcb_stdin": ([{"input": "1 2", "output": "3", "testtype": "stdin"},
                   {"input": "5 7", "output": "12", "testtype": "stdin"}], None, STDIN_OK, STDIN_WRONG, STDIN_CRASH),
    "deepcoder": ([{"input": "1 2\n", "output": "3\n", "type": "stdin_stdout"},
                   {"input": "5 7\n", "output": "12\n", "type": "stdin_stdout"}], None,
                  STDIN_OK, STDIN_WRONG, STDIN_CRASH),
    "fn_name": ({"inputs": [[[3, 1, 2]], [[5, 4]]], "outputs": [[[1, 2, 3]], [[4, 5]]], "fn_name": "sort_it"}, None,
                "def sort_it(xs):\n    return sorted(xs)", "def sort_it(xs):\n    return xs",
                "def sort_it(xs):\n    return xs[10]"),
    "lcb_functional": ([{"input": "[2, 7, 11]\n9", "output": "[0, 1]", "testtype": "functional"},
                        {"input": "[3, 3]\n6", "output": "[0, 1]", "testtype": "functional"}], "twoSum",
                       "class Solution:\n    def twoSum(self, nums, target):\n        seen = {}\n"
                       "        for i, x in enumerate(nums):\n            if target - x in seen:\n"
                       "                return [seen[target - x], i]\n            seen[x] = i",
                       "class Solution:\n    def twoSum(self, nums, target):\n        return [1, 0]",
                       "class Solution:\n    def twoSum(self, nums, target):\n        raise RuntimeError('x')"),
}


@pytest.mark.parametrize("fmt", sorted(CASES))
def test_correct_wrong_crashing(fmt):
    tests, fn_name, ok, wrong, crash = CASES[fmt]
    r = code_reward(fenced(ok), tests, fn_name=fn_name, cache_size=0, **FAST)
    assert (r.reward, r.passed, r.total, r.fraction) == (1.0, 2, 2, 1.0), r
    r = code_reward(fenced(wrong), tests, fn_name=fn_name, cache_size=0, stop_on_first_failure=False, **FAST)
    assert r.reward == 0 and r.passed < 2 and r.total == 2 and "wrong answer" in r.reasons[0]
    r = code_reward(fenced(crash), tests, fn_name=fn_name, cache_size=0, **FAST)
    assert r.reward == 0 and r.extra["statuses"] == ["error"] and "Error" in r.extra["stderr"]


def test_fraction_counts_every_test_without_early_stop():
    tests = {"inputs": ["1", "2", "3", "4"], "outputs": ["1", "4", "9", "15"]}
    code = fenced("x = int(input())\nprint(x * x)")
    full = code_reward(code, tests, stop_on_first_failure=False, cache_size=0, **FAST)
    assert (full.reward, full.passed, full.total, full.fraction) == (0.0, 3, 4, 0.75)
    assert full.extra["statuses"] == ["passed"] * 3 + ["wrong_answer"]
    early = code_reward(fenced("import time\nx = int(input())\nprint(-x)\ntime.sleep(1.0 * (x > 1))"), tests,
                        cache_size=0, **FAST)
    assert early.extra["statuses"] == ["wrong_answer"] and early.extra["wall_s"] < 1.5  # not 3 more seconds


def test_per_test_and_total_time_limits():
    tests = {"inputs": ["1", "2", "3"], "outputs": ["1", "2", "3"]}
    slow_second = fenced("import time\nx = int(input())\nif x == 2: time.sleep(30)\nprint(x)")
    r = code_reward(slow_second, tests, per_test_time_s=0.5, stop_on_first_failure=False, cache_size=0)
    assert r.extra["statuses"] == ["passed", "timeout", "passed"] and r.reward == 0
    r = code_reward(fenced("import time\ntime.sleep(0.6)\nprint(input())"), tests, per_test_time_s=5,
                    total_time_s=1.0, cache_size=0)
    assert r.reward == 0 and r.extra["sandbox_status"] == "timeout" and "ended (timeout)" in r.reasons[0]


def test_max_tests_cap_and_cache():
    CACHE.clear()
    tests = {"inputs": [str(i) for i in range(10)], "outputs": [str(i) for i in range(9)] + ["wrong"]}
    code = fenced("print(input())")
    r = code_reward(code, tests, max_tests=9, **FAST)
    assert (r.reward, r.total, r.extra["cached"]) == (1.0, 9, False)
    again = code_reward(code, tests, max_tests=9, **FAST)
    assert again.extra["cached"] and again.reward == 1.0 and again.extra["wall_s"] == r.extra["wall_s"]
    assert code_reward(code, tests, **FAST).reward == 0  # different settings: not the cached entry


def test_no_code_and_syntax_error():
    tests = {"inputs": ["1"], "outputs": ["1"]}
    r = code_reward("I think the answer is 1.", tests)
    assert (r.reward, r.total, r.reasons) == (0.0, 1, ["no code block found"])
    r = code_reward(fenced("def broken(:\n    pass"), tests, cache_size=0, **FAST)
    assert r.reward == 0 and "compile" in r.reasons[0]


def test_state_does_not_leak_between_tests():
    tests = {"inputs": ["a", "b"], "outputs": ["1", "1"]}
    code = fenced("import os\nopen('count', 'a').write('x')\nprint(len(open('count').read()))")
    assert code_reward(code, tests, cache_size=0, **FAST).passed == 1  # files persist within a run (one dir)
    code = fenced("import builtins\nbuiltins.SEEN = getattr(builtins, 'SEEN', 0) + 1\nprint(builtins.SEEN)")
    assert code_reward(code, tests, cache_size=0, **FAST).reward == 1  # interpreter state does not


def test_registered_score_and_config_override():
    problem = {"verifier": "code", "input_output": {"inputs": ["2\n"], "outputs": ["4\n"]},
               "code_reward": {"per_test_time_s": 2.0}}
    completion = fenced("print(int(input()) ** 2)")
    assert registry.get_verifier("code") is score
    assert registry.score(problem, completion).reward == 1.0
    assert CodeRewardConfig(**problem["code_reward"]).per_test_time_s == 2.0
    with pytest.raises(ValueError, match="no tests"):
        code_reward(completion, {"inputs": [], "outputs": []})


# ---- group mode: several programs, one sandbox launch --------------------------------------------

def test_group_gives_the_same_rewards_as_one_run_each():
    tests = {"inputs": ["1", "2", "3"], "outputs": ["2", "4", "6"]}
    programs = [fenced("print(2 * int(input()))"), fenced("print(int(input()) + 1)"), "no code here",
                fenced("def broken(:"), fenced("raise SystemExit(3)"), fenced("import time\ntime.sleep(30)"),
                fenced("print(2 * int(input()))"), fenced("x = int(input())\nprint(x * x + 1 if x < 3 else 6)")]
    CACHE.clear()
    group = code_reward_group(programs, tests, per_test_time_s=0.5, total_time_s=10.0, cache_size=0)
    single = [code_reward(p, tests, per_test_time_s=0.5, total_time_s=10.0, cache_size=0) for p in programs]
    assert [r.reward for r in group] == [r.reward for r in single] == [1, 0, 0, 0, 0, 0, 1, 0]
    assert [r.passed for r in group] == [r.passed for r in single]
    assert group[5].extra["statuses"] == ["timeout"] and "compile" in group[3].reasons[0]
    assert group[2].reasons == ["no code block found"] and group[0].extra["code"] == group[6].extra["code"]


def test_group_candidates_cannot_reach_each_other():
    """Files (working dir and /tmp) and processes of one program are gone before the next one runs."""
    tests = {"inputs": ["1"], "outputs": ["clean"]}
    writer = fenced("import os, subprocess, sys\nopen('mark', 'w').write('1')\nopen('/tmp/mark', 'w').write('1')\n"
                    "os.makedirs('/tmp/d/e', exist_ok=True)\nos.chmod('/tmp/d', 0)\n"
                    "if os.fork() == 0:\n    os.setsid()\n    import time\n    time.sleep(0.5)\n"
                    "    open('/tmp/late', 'w').write('1')\n    os._exit(0)\nprint('clean')")
    reader = fenced("import os, time\ntime.sleep(1.0)\n"
                    "seen = [p for p in ('mark', '/tmp/mark', '/tmp/late', '/tmp/d') if os.path.exists(p)]\n"
                    "print('clean' if not seen else seen)")
    rewards = [r.reward for r in code_reward_group([writer, reader, writer, reader], tests, cache_size=0, **FAST)]
    assert rewards == [1.0, 1.0, 1.0, 1.0]
    assert code_reward(reader, tests, cache_size=0, **FAST).reward == 1.0


def test_group_verifier_is_registered_and_uses_the_cache():
    problem = {"verifier": "code", "input_output": {"inputs": ["2\n"], "outputs": ["4\n"]},
               "response_prefix": "```python\nprint(int(input())"}
    assert registry.get_group_verifier("code") is score_group
    CACHE.clear()
    first = score_group(problem, [" ** 2)\n```", " + 2)\n```", " * 3)\n```"])
    assert [r.reward for r in first] == [1.0, 1.0, 0.0] and not any(r.extra["cached"] for r in first)
    again = score_group(problem, [" * 3)\n```", " ** 2)\n```"])
    assert [r.reward for r in again] == [0.0, 1.0] and all(r.extra["cached"] for r in again)
    assert score(problem, " ** 2)\n```").reward == 1.0
