"""Code-reward plumbing that never runs code: code extraction, test formats, output comparison.

Test formats accepted by :func:`parse_tests` (JSON strings are decoded first):

- APPS / TACO / DeepCoder dicts: ``{"inputs": [...], "outputs": [...], "fn_name"?: str}``, also wrapped
  as ``{"input_output": ...}``. With ``fn_name`` the tests are call-based (each input is the argument
  list); otherwise stdin/stdout (an input or output given as a list of lines is joined with newlines).
- LiveCodeBench / DeepCoder lists: ``[{"input": str, "output": str, "testtype": "stdin"|"functional"}]``
  (``type`` is accepted for ``testtype``; "stdin_stdout" means stdin). Functional inputs hold one JSON
  value per line (the arguments); outputs are one JSON value.
- Call-based tests need a function name: the tests' own ``fn_name`` or the ``fn_name`` argument; the
  program may define it at top level or as a method of a LeetCode-style ``class Solution``.

Comparison follows LiveCodeBench: stdout and expected output are stripped and split into lines, the line
counts must agree, lines are compared stripped, and lines that differ textually match when their
whitespace-separated tokens are equal or are numbers within ``float_tol`` (absolute or relative).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

_FENCE = re.compile(r"```[ \t]*([\w+.#-]*)[^\n]*\n(.*?)```", re.S)
PYTHON_TAGS = ("python", "python3", "py", "")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_STDIN_TYPES = (None, "", "stdin", "stdin_stdout", "stdio")
_CALL_TYPES = ("functional", "function", "function_call", "call")


def extract_code(completion: str, block: str = "last", languages: tuple[str, ...] = PYTHON_TAGS) -> str | None:
    """The program in ``completion``: the last (or first) fenced block tagged with one of ``languages``.

    Only the text after the last ``</think>`` is searched when the completion has one. ``block="none"``
    takes that whole text as the program. Returns None when no such block exists (an unclosed fence
    counts as none: a truncated completion is not run).
    """
    if block not in ("last", "first", "none"):
        raise ValueError(f"block must be 'last', 'first' or 'none', got {block!r}")
    text = completion.rsplit("</think>", 1)[-1]
    if block == "none":
        return text
    bodies = [body for tag, body in _FENCE.findall(text) if tag.lower() in languages]
    if not bodies:
        return None
    return bodies[-1] if block == "last" else bodies[0]


@dataclass
class TestSuite:
    """Normalized tests. kind: "stdin" (inputs are str) or "call" (inputs are argument lists);
    outputs: expected stdout strings or expected return values; fn_name: the function called."""

    kind: str
    inputs: list
    outputs: list
    fn_name: str | None = None

    def __len__(self) -> int:
        return len(self.inputs)

    def head(self, n: int) -> "TestSuite":
        return TestSuite(self.kind, self.inputs[:n], self.outputs[:n], self.fn_name)


def _decode(obj: Any) -> Any:
    return json.loads(obj) if isinstance(obj, (str, bytes)) else obj


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    if not isinstance(value, str):
        raise ValueError(f"a stdin test input/output must be a string or a list of lines, got {type(value).__name__}")
    return value


def _args(value: Any) -> list:
    if isinstance(value, str):
        return [json.loads(line) for line in value.split("\n") if line.strip()]
    return list(value) if isinstance(value, (list, tuple)) else [value]


def parse_tests(tests: Any, fn_name: str | None = None) -> TestSuite:
    """Normalize ``tests`` (any format listed in the module docstring) to a TestSuite."""
    tests = _decode(tests)
    if isinstance(tests, dict) and "input_output" in tests:
        return parse_tests(tests["input_output"], tests.get("fn_name") or fn_name)
    if isinstance(tests, dict):
        if "inputs" not in tests or "outputs" not in tests:
            raise ValueError(f"a test dict needs 'inputs' and 'outputs', got keys {sorted(tests)}")
        inputs, outputs = list(tests["inputs"]), list(tests["outputs"])
        if len(inputs) != len(outputs):
            raise ValueError(f"{len(inputs)} test inputs but {len(outputs)} outputs")
        name = tests.get("fn_name") or fn_name
        if name:
            return TestSuite("call", [_args(i) for i in inputs], outputs, name)
        return TestSuite("stdin", [_text(i) for i in inputs], [_text(o) for o in outputs])
    if isinstance(tests, list) and all(isinstance(t, dict) and "input" in t and "output" in t for t in tests):
        kinds = set()
        for t in tests:
            ttype = t.get("testtype", t.get("type"))
            if ttype in _STDIN_TYPES:
                kinds.add("stdin")
            elif ttype in _CALL_TYPES:
                kinds.add("call")
            else:
                raise ValueError(f"unknown test type {ttype!r}")
        if len(kinds) > 1:
            raise ValueError("tests mix stdin and functional test types")
        if kinds == {"call"}:
            name = fn_name or next((t["fn_name"] for t in tests if t.get("fn_name")), None)
            if not name:
                raise ValueError("functional tests need a function name (fn_name)")
            return TestSuite("call", [_args(t["input"]) for t in tests], [_decode(t["output"]) for t in tests], name)
        return TestSuite("stdin", [_text(t["input"]) for t in tests], [_text(t["output"]) for t in tests])
    raise ValueError(f"unrecognized test format: {type(tests).__name__} {str(tests)[:200]!r}")


def _metadata_fn_name(problem: dict) -> str | None:
    if problem.get("fn_name"):
        return problem["fn_name"]
    meta = problem.get("metadata")
    if isinstance(meta, str) and meta.strip().startswith("{"):
        meta = json.loads(meta)
    if isinstance(meta, dict):
        return meta.get("func_name") or meta.get("fn_name")
    return None


def problem_tests(problem: dict) -> TestSuite:
    """The tests of a dataset row: "tests", "input_output", "test_cases", or LiveCodeBench's
    "public_test_cases" + "private_test_cases" (JSON only: compressed private tests must be decoded by
    the data loader first; they are never unpickled here)."""
    fn_name = _metadata_fn_name(problem)
    for key in ("tests", "input_output", "test_cases"):
        if problem.get(key):
            return parse_tests(problem[key], fn_name)
    if problem.get("public_test_cases") or problem.get("private_test_cases"):
        cases = []
        for key in ("public_test_cases", "private_test_cases"):
            raw = problem.get(key) or []
            if isinstance(raw, str) and not raw.lstrip().startswith("["):
                raise ValueError(f"{key} is not JSON (compressed LiveCodeBench tests): decode it when loading data")
            cases += _decode(raw)
        return parse_tests(cases, fn_name)
    raise ValueError(f"no tests in problem (keys: {sorted(problem)})")


def _tokens_match(a: str, b: str, tol: float) -> bool:
    ta, tb = a.split(), b.split()
    if len(ta) != len(tb):
        return False
    for x, y in zip(ta, tb):
        if x == y:
            continue
        if not (_NUMBER.fullmatch(x) and _NUMBER.fullmatch(y)):
            return False
        if not math.isclose(float(x), float(y), rel_tol=tol, abs_tol=tol):
            return False
    return True


def stdout_matches(got: str, expected: str, float_tol: float = 1e-6) -> bool:
    """LiveCodeBench-style comparison of a program's stdout with the expected output."""
    got_lines, exp_lines = got.strip().split("\n"), expected.strip().split("\n")
    if len(got_lines) != len(exp_lines):
        return False
    for g, e in zip(got_lines, exp_lines):
        g, e = g.strip(), e.strip()
        if g != e and not _tokens_match(g, e, float_tol):
            return False
    return True


def _values_match(got: Any, expected: Any, tol: float) -> bool:
    if isinstance(got, bool) or isinstance(expected, bool):
        return type(got) is type(expected) and got == expected
    if isinstance(got, (int, float)) and isinstance(expected, (int, float)):
        return got == expected or math.isclose(got, expected, rel_tol=tol, abs_tol=tol)
    if isinstance(got, list) and isinstance(expected, (list, tuple)):
        return len(got) == len(expected) and all(_values_match(g, e, tol) for g, e in zip(got, expected))
    if isinstance(got, dict) and isinstance(expected, dict):
        return got.keys() == expected.keys() and all(_values_match(got[k], expected[k], tol) for k in got)
    return type(got) is type(expected) and got == expected


def return_matches(got_json: str, expected: Any, float_tol: float = 1e-6) -> bool:
    """Compare a JSON-serialized return value with the expected value (APPS call-based outputs that
    wrap the value in a one-element list match either way)."""
    try:
        got = json.loads(got_json)
    except ValueError:
        return False
    if _values_match(got, expected, float_tol):
        return True
    return isinstance(expected, list) and len(expected) == 1 and _values_match(got, expected[0], float_tol)
