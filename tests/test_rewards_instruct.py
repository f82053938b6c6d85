"""Instruction-following verifier: every rule passes and fails, strict vs partial reward, errors."""

import pytest

from vt_core.rewards import score
from vt_core.rewards.instruct import RULES, check_rule, instruct_reward, validate_rules

TEXT = """<<Ocean Facts>>

* The ocean is big.
* It is deep, really deep!
- Ocean waves carry [name].

SECTION 1 Tides rise.
SECTION 2 Tides fall. Is that all?"""

FENCED_JSON = '```json\n{"a": [1, 2], "b": "x"}\n```'

# (rule, text that passes, text that fails, fragment of the failure reason)
CASES = [
    ({"type": "json_format"}, '{"a": 1}', "{'a': 1}", "not valid JSON"),
    ({"type": "json_format"}, FENCED_JSON, "```json\n{oops}\n```", "not valid JSON"),
    ({"type": "json_format", "allow_fence": False}, '[1, 2]', FENCED_JSON, "not valid JSON"),
    ({"type": "bullet_count", "exact": 3}, TEXT, "* one\n* two", "expected exactly 3"),
    ({"type": "bullet_count", "min": 2}, "- a\n- b", "- a\nb", "at least 2"),
    ({"type": "bullet_count", "max": 1}, "+ a\nplain", "* a\n* b", "at most 1"),
    ({"type": "bullet_count", "exact": 2, "numbered": True}, "1. a\n2) b", "1. a", "found 1"),
    ({"type": "section_count", "exact": 2}, TEXT, "SECTION 1 only", "expected exactly 2"),
    ({"type": "section_count", "min": 1, "marker": "PART"}, "PART A\nx", "SECTION 1", "at least 1"),
    ({"type": "word_count", "min": 2, "max": 3}, "two words", "one", "at least 2"),
    ({"type": "max_words", "value": 3}, "a b c", "a b c d", "at most 3"),
    ({"type": "min_words", "value": 20}, TEXT, "too short", "at least 20"),
    ({"type": "sentence_count", "exact": 2}, "One. Two!", "One. Two? Three.", "exactly 2"),
    ({"type": "max_sentences", "value": 1}, "Just one sentence.", "One. Two.", "at most 1"),
    ({"type": "min_sentences", "value": 2}, "One. Two.", "One.", "at least 2"),
    ({"type": "paragraph_count", "exact": 3}, TEXT, "p1\n\np2", "exactly 3"),
    ({"type": "paragraph_count", "exact": 2, "separator": "***"}, "p1\n***\np2", "p1\n\np2", "exactly 2"),
    ({"type": "max_paragraphs", "value": 1}, "p1\nstill p1", "p1\n\np2", "at most 1"),
    ({"type": "min_paragraphs", "value": 2}, "p1\n \np2", "p1", "at least 2"),
    ({"type": "keywords_present", "keywords": ["ocean", "tides"]}, TEXT, "The ocean.", "['tides']"),
    ({"type": "keywords_present", "keywords": ["ocean"], "min_count": 3}, TEXT, "ocean ocean", "fewer than 3"),
    ({"type": "keyword_frequency", "keyword": "deep", "exact": 2}, TEXT, "deep deeper", "found 1"),
    ({"type": "keyword_frequency", "keyword": "Deep", "max": 1}, "deep", "deep DEEP", "at most 1"),
    ({"type": "keywords_forbidden", "keywords": ["shark"]}, TEXT, "A Shark!", "['shark']"),
    ({"type": "keywords_forbidden", "keywords": ["cat"]}, "concatenate", "my cat", "['cat']"),
    ({"type": "all_lowercase"}, "all lower, 123.", "Not lower", "N"),
    ({"type": "all_uppercase"}, "ALL UPPER!", "ALL UPPEr", "r"),
    ({"type": "ends_with", "phrase": "Is that all?"}, TEXT + "\n  ", "Is that all? No.", "does not end"),
    ({"type": "starts_with", "phrase": "<<Ocean"}, "  " + TEXT, "Hello <<Ocean", "does not start"),
    ({"type": "no_commas"}, "no commas here", "a, b", "1 comma"),
    ({"type": "placeholder_count", "min": 2}, "[name] at [address]", "[name] only", "at least 2"),
    ({"type": "title"}, TEXT, "<<>> no title", "no <<title>>"),
]


@pytest.mark.parametrize("rule, good, bad, reason", CASES, ids=[f"{i}-{c[0]['type']}" for i, c in enumerate(CASES)])
def test_rule_pass_and_fail(rule, good, bad, reason):
    ok, why = check_rule(good, rule)
    assert ok, why
    ok, why = check_rule(bad, rule)
    assert not ok and reason in why


def test_every_rule_type_is_covered():
    assert {c[0]["type"] for c in CASES} == set(RULES)


def test_strict_and_partial_reward():
    rules = [{"type": "all_lowercase"}, {"type": "max_words", "value": 1}, {"type": "no_commas"}]
    strict = instruct_reward("<think>Plan, Plan</think>hello world", rules)
    assert (strict.reward, strict.passed, strict.total) == (0.0, 2, 3)
    assert strict.reasons == ["max_words: words: found 2, expected at most 1"]
    assert [o["passed"] for o in strict.extra["rules"]] == [True, False, True]
    partial = instruct_reward("hello world", rules, partial_credit=True)
    assert partial.reward == pytest.approx(2 / 3)
    assert instruct_reward("hello", rules).reward == 1.0


def test_unclosed_think_scores_0():
    r = instruct_reward("<think>hello", [{"type": "all_lowercase"}])
    assert r.reward == 0.0 and r.total == 1 and "unclosed <think>" in r.reasons[0]


def test_errors_name_the_rule():
    with pytest.raises(ValueError, match=r"unknown instruction rule type 'shout'.*\{'type': 'shout'\}"):
        instruct_reward("x", [{"type": "no_commas"}, {"type": "shout"}])
    with pytest.raises(ValueError, match="needs 'exact', 'min' or 'max'"):
        validate_rules([{"type": "bullet_count"}])
    with pytest.raises(ValueError, match="needs a 'phrase'"):
        validate_rules([{"type": "ends_with"}])
    with pytest.raises(ValueError, match="at least one rule"):
        instruct_reward("x", [])
    validate_rules([c[0] for c in CASES])


def test_registry_entry():
    problem = {"domain": "instruct", "rules": [{"type": "json_format"}, {"type": "no_commas"}]}
    assert score(problem, "not json").reward == 0.0
    assert score(problem, '{"a": 1}').reward == 1.0
    assert score({**problem, "partial_credit": True}, '{"a": 1, "b": 2}').reward == 0.5
