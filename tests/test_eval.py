"""Evaluation (vt_core.eval, recipes/eval.py): pass@k estimator, summaries, benchmark loaders, mechanics."""

from __future__ import annotations

import base64
import itertools
import json
import math
import pickle
import zlib

import pytest

from vt_core.data import DataError
from vt_core.eval import benchmark_problem, decode_test_cases, evaluate, format_table, load_benchmark, pass_at_k
from vt_core.eval import summarize
from vt_core.generation import Completion, SamplingParams
from vt_core.rewards.code_formats import problem_tests



def test_pass_at_k_equals_exact_enumeration():
    for n in range(1, 8):
        for c in range(n + 1):
            samples = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                exact = sum(any(s) for s in subsets) / len(subsets)
                assert math.isclose(pass_at_k(n, c, k), exact, rel_tol=0, abs_tol=1e-12), (n, c, k)
    for bad in [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)]:
        with pytest.raises(ValueError, match="pass_at_k needs"):
            pass_at_k(*bad)


def test_summarize_overall_and_per_subdomain():
    correct = [[True, True, False, False], [False, False, False, False], [True, True, True, True]]
    res = summarize(correct, ["algebra", "algebra", "geometry"], ks=(1, 2, 4, 8))
    assert res["problems"] == 3 and res["samples"] == 4
    fracs = [0.5, 0.0, 1.0]
    assert math.isclose(res["pass@1"], 0.5) and math.isclose(res["mean@4"], 0.5)
    assert math.isclose(res["pass@1_stderr"], math.sqrt(sum((f - 0.5) ** 2 for f in fracs) / 2 / 3))
    assert math.isclose(res["pass@2"], (1 - 1 / 6 + 0 + 1) / 3)  # 2 of 4 correct: 1 - C(2,2)/C(4,2)
    assert math.isclose(res["pass@4"], 2 / 3) and "pass@8" not in res  # k above the sample count is left out
    alg, geo = res["by_subdomain"]["algebra"], res["by_subdomain"]["geometry"]
    assert alg["problems"] == 2 and math.isclose(alg["pass@1"], 0.25) and math.isclose(alg["pass@4"], 0.5)
    assert geo["problems"] == 1 and geo["pass@1"] == 1.0 and geo["pass@1_stderr"] == 0.0
    table = format_table({"probe": res}, ks=(1, 2, 4))
    assert "probe/algebra" in table and "pass@4" in table and "50.0%" in table


def _compressed(cases) -> str:
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()


def test_benchmark_loaders(tmp_path):
    public = [{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]
    private = [{"input": "5 6\n", "output": "11\n", "testtype": "stdin"}, {"input": "0 0\n", "output": "0\n",
                                                                          "testtype": "stdin"}]
    rows = [
        {"ID": "2025-I-1", "Problem": "Find $1+1$.", "Answer": 2},
        {"question_id": "abc001_a", "question_content": "Add two integers.", "starter_code": "",
         "public_test_cases": json.dumps(public), "private_test_cases": _compressed(private),
         "metadata": "{}", "difficulty": "easy", "platform": "atcoder"},
        {"question_id": "lc1", "question_content": "Return x + 1.",
         "starter_code": "class Solution:\n    def inc(self, x)",
         "public_test_cases": json.dumps([{"input": "3", "output": "4", "testtype": "functional"}]),
         "private_test_cases": "", "metadata": json.dumps({"func_name": "inc"}), "difficulty": "medium"},
        {"id": "t1", "prompt": "Compute 2 * 3.", "answer": "6", "verifier": "math", "subdomain": "arithmetic"},
    ]
    path = tmp_path / "bench.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    aime, stdin, call, native = load_benchmark(path)
    assert aime == {"id": "2025-I-1", "prompt": "Find $1+1$.", "answer": "2", "verifier": "math", "subdomain": "math"}
    assert stdin["verifier"] == "code" and stdin["subdomain"] == "easy" and stdin["tests"] == public + private
    suite = problem_tests(stdin)  # the code verifier reads the decoded tests as they are
    assert suite.kind == "stdin" and suite.inputs == ["1 2\n", "5 6\n", "0 0\n"]
    assert call["fn_name"] == "inc" and "class Solution" in call["prompt"] and problem_tests(call).kind == "call"
    assert native == {**rows[3]}
    assert len(load_benchmark(path, limit=2)) == 2

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = base64.b64encode(zlib.compress(pickle.dumps(Boom()))).decode()
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle builtins.print"):
        decode_test_cases(evil)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({**rows[1], "private_test_cases": evil}) + "\n")
    with pytest.raises(DataError, match="bad.jsonl, row 2.*refusing to unpickle"):
        load_benchmark(bad)
    with pytest.raises(ValueError, match="unrecognized benchmark row"):
        benchmark_problem({"text": "no problem here"})
    with pytest.raises(ValueError, match="none of the fields"):
        benchmark_problem({"prompt": "x"}, fmt="aime")


class ScriptedEngine:
    """Stands in for the engine: returns fixed completions and records the sampling params it got."""

    def __init__(self, texts: list[list[str]]):
        self.texts, self.params = texts, None

    def generate(self, prompts, params, n=1):
        self.params = params
        assert len(prompts) == len(self.texts) and all(len(t) == n for t in self.texts)
        return [[Completion(token_ids=[1], text=t) for t in row] for row in self.texts]


class CharTokenizer:
    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(ch) % 50 for ch in text]}


def test_evaluate_scores_samples_with_the_verifier():
    problems = [
        {"id": "a", "prompt": "Compute 10 * 9 - 28.", "answer": "62", "verifier": "math", "subdomain": "arithmetic"},
        {"id": "b", "prompt": "Solve 2x = 3.", "answer": "\\frac{3}{2}", "verifier": "math", "subdomain": "algebra"},
    ]
    engine = ScriptedEngine([["so \\boxed{62}", "\\boxed{61}", "no answer"], ["\\boxed{1.5}", "\\boxed{3/2}", "x"]])
    res = evaluate(engine, CharTokenizer(), problems, k=3, ks=(1, 2, 3), params=SamplingParams(temperature=0.7),
                   seed=100)
    assert res["rewards"] == [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]] and res["ids"] == ["a", "b"]
    assert [p.seed for p in engine.params] == [100, 101] and engine.params[0].temperature == 0.7
    assert math.isclose(res["pass@1"], 0.5) and math.isclose(res["pass@3"], 1.0)
    assert math.isclose(res["pass@2"], ((1 - 1 / 3) + (1 - 0)) / 2)
    assert math.isclose(res["by_subdomain"]["algebra"]["pass@1"], 2 / 3)


def test_eval_recipe_end_to_end(tmp_path, capsys, load_recipe):
    math_rows = [
        {"id": f"m{i}", "prompt": f"What is {i} + {i}?", "answer": str(2 * i), "verifier": "math",
         "subdomain": "arithmetic" if i % 2 else "doubling"} for i in range(3)
    ]
    (tmp_path / "tiny_math.jsonl").write_text("".join(json.dumps(r) + "\n" for r in math_rows))
    (tmp_path / "aime.jsonl").write_text(json.dumps({"problem": "Find 3 + 4.", "answer": 7}) + "\n")
    out = tmp_path / "res" / "eval.json"
    recipe = load_recipe("eval")
    report = recipe.main([
        "--data.sets", f"{tmp_path / 'tiny_math.jsonl'},{tmp_path / 'aime.jsonl'}", "--sampling.k", "2",
        "--sampling.ks", "1,2,8", "--sampling.max_new_tokens", "6", "--model.device", "cpu", "--out", str(out),
    ])
    saved = json.loads(out.read_text())
    assert saved["config"]["sampling"]["k"] == 2 and saved["table"] == report["table"]
    tiny = saved["results"]["tiny_math"]
    assert tiny["problems"] == 3 and tiny["samples"] == 2 and set(tiny["by_subdomain"]) == {"arithmetic", "doubling"}
    assert len(tiny["rewards"]) == 3 and all(len(r) == 2 and set(r) <= {0.0, 1.0} for r in tiny["rewards"])
    assert {"pass@1", "pass@2", "mean@2", "pass@1_stderr"} <= set(tiny) and "pass@8" not in tiny
    assert saved["results"]["aime"]["problems"] == 1
    printed = capsys.readouterr().out
    assert "--sampling.k = 2" in printed and "tiny_math/doubling" in printed and "aime/math" in printed
