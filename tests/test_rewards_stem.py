"""STEM verifier: multiple-choice letters, numbers with units / scientific notation / percentages, tolerance."""

import pytest

from vt_core.rewards import score
from vt_core.rewards.stem import extract_choice, numbers_match, parse_numbers, stem_reward


@pytest.mark.parametrize(
    "text, letter",
    [
        ("Answer: (C)", "C"),
        (r"so \boxed{C}", "C"),
        (r"\boxed{\text{(D)}}", "D"),
        ("Thus the answer is C.", "C"),
        ("The correct option is **B**", "B"),
        ("A looks tempting, but the final answer: B", "B"),
        ("  (E).  ", "E"),
        ("J", "J"),
        ("The answer is a prime number", None),
        ("no letter here", None),
    ],
)
def test_extract_choice(text, letter):
    assert extract_choice(text) == letter


def test_choice_limited_to_the_number_of_options():
    assert extract_choice("Answer: E", n_choices=4) is None
    assert extract_choice("Answer: D", n_choices=4) == "D"


@pytest.mark.parametrize(
    "text, value, pct",
    [
        ("9.8 m/s^2", 9.8, False),
        ("3.0e8", 3.0e8, False),
        (r"3.0 \times 10^{8} m/s", 3.0e8, False),
        ("3 x 10^8", 3.0e8, False),
        ("6.02×10^23", 6.02e23, False),
        ("1,200 J", 1200.0, False),
        ("45%", 45.0, True),
        (r"12.5\%", 12.5, True),
        (r"\frac{3}{4}", 0.75, False),
        ("3/4 kg", 0.75, False),
        ("\u22124.5 N", -4.5, False),
        ("12 m s^{-1}", 12.0, False),
    ],
)
def test_parse_numbers(text, value, pct):
    (got,) = parse_numbers(text)
    assert got[0] == pytest.approx(value) and got[1] is pct


def test_numbers_match_tolerance_and_percent():
    assert numbers_match((9.81, False), (9.8, False), 1e-2, 1e-8)
    assert not numbers_match((9.81, False), (9.8, False), 1e-4, 1e-8)
    assert numbers_match((0.45, False), (45.0, True), 1e-2, 1e-8)
    assert numbers_match((45.0, True), (0.45, False), 1e-2, 1e-8)
    assert numbers_match((45.0, False), (45.0, True), 1e-2, 1e-8)
    assert numbers_match((1e-9, False), (0.0, False), 1e-2, 1e-8)
    assert not numbers_match((float("nan"), False), (1.0, False), 1e-2, 1e-8)


@pytest.mark.parametrize(
    "completion, gold",
    [
        (r"<think>g is about 10</think> g = \boxed{9.81 m/s^2}", "9.8"),
        ("The answer is 1,200 J, not 3 J", "1.2e3"),
        ("The answer is 0.45", "45%"),
        ("so the result is 3 x 10^8 m/s", "3.0e8"),
        ("It moves at 12 m/s^2", 12),
        ("Answer: (C)", "C"),
        (r"\boxed{B}", "b"),
        (r"\boxed{\text{Paris}}", "paris"),
    ],
)
def test_correct(completion, gold):
    r = stem_reward(completion, gold)
    assert r.reward == 1.0 and (r.passed, r.total) == (1, 1)


@pytest.mark.parametrize(
    "completion, gold, reason",
    [
        ("so the result is 3.5", 3, "not within tolerance"),
        ("Answer: (D)", "C", "answered D, expected C"),
        ("<think>Answer: (C)", "C", "unclosed <think>"),
        ("I am not sure", "C", "no answer letter"),
        ("I am not sure", "2.5", "no numeric answer"),
        (r"\boxed{London}", "Paris", "differs"),
    ],
)
def test_wrong(completion, gold, reason):
    r = stem_reward(completion, gold)
    assert r.reward == 0.0 and r.passed == 0 and reason in r.reasons[0]


def test_registry_entry_with_choices_and_tolerance():
    problem = {"domain": "stem", "answer": "B", "choices": ["1", "2", "3"]}
    assert score(problem, "The answer is (B)").reward == 1.0
    assert score(problem, "The answer is (D)").reward == 0.0
    with pytest.raises(ValueError, match="not one of ABC"):
        score({**problem, "answer": "E"}, "The answer is (E)")
    assert score({"verifier": "stem", "answer": "100", "rel_tol": 0.05}, "Answer: 104").reward == 1.0
    assert score({"verifier": "stem", "answer": "100"}, "Answer: 104").reward == 0.0
