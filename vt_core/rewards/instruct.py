"""Instruction-following verifier: IFEval-style rule validators.

A problem lists its rules: ``problem["rules"] = [{"type": "max_words", "value": 100}, {"type":
"keywords_present", "keywords": ["ocean"]}, ...]``. Every rule is checked on the answer region (the text
after the last ``</think>``; an unclosed ``<think>`` scores 0) and returns (passed, reason). The reward is
1.0 when every rule passes (strict), else 0.0; ``problem["partial_credit"] = True`` makes it the fraction
passed. ``.passed`` / ``.total`` count rules, ``.reasons`` lists each failure, ``.extra["rules"]`` has
the per-rule outcome. An unknown rule type or a missing parameter raises ValueError naming the rule
(``validate_rules`` checks a rule list up front).

Count rules take ``exact``, ``min`` and/or ``max`` (inclusive). Rule types:

=====================  ==========================================================================
json_format            the reply is valid JSON; ``allow_fence`` (default true) also accepts one
                       fenced block (```json ... ```) holding it
bullet_count           markdown bullets (lines starting with ``*``, ``-`` or ``+`` then a space);
                       ``numbered: true`` also counts ``1.`` / ``1)`` items; exact/min/max
section_count          section headers ``<marker> <n>`` (``marker`` default "SECTION"); exact/min/max
word_count             words (whitespace-separated tokens with a letter or digit); exact/min/max
sentence_count         sentences (split after ``.``, ``!``, ``?``); exact/min/max
paragraph_count        paragraphs separated by blank lines (or by ``separator``, e.g. ``***``);
                       exact/min/max
max_words/min_words, max_sentences/min_sentences, max_paragraphs/min_paragraphs: shorthands with ``value``
keywords_present       each of ``keywords`` appears at least ``min_count`` times (default 1),
                       case-insensitive, whole words
keyword_frequency      ``keyword`` appears exact/min/max times (case-insensitive, whole words)
keywords_forbidden     none of ``keywords`` appears (case-insensitive, whole words)
all_lowercase          no upper-case letter
all_uppercase          no lower-case letter
ends_with              the reply (trailing whitespace ignored) ends with ``phrase``
starts_with            the reply (leading whitespace ignored) starts with ``phrase``
no_commas              no ``,`` in the reply
placeholder_count      square-bracket placeholders such as ``[address]``; exact/min/max
title                  a title wrapped in double angle brackets, e.g. ``<<My Title>>``
=====================  ==========================================================================
"""

from __future__ import annotations

import json
import re
from typing import Callable

from vt_core.rewards.base import RewardResult
from vt_core.rewards.math_verifier import answer_region
from vt_core.rewards.registry import register_verifier

Check = tuple[bool, str]

_FENCE_RE = re.compile(r"^\s*```[A-Za-z0-9_-]*[ \t]*\n(.*?)\n?```\s*$", re.DOTALL)
_BULLET_RE = re.compile(r"^\s*[*+-]\s+\S", re.MULTILINE)
_NUMBERED_RE = re.compile(r"^\s*\d+[.)]\s+\S", re.MULTILINE)
_WORD_RE = re.compile(r"\S*[A-Za-z0-9]\S*")
_SENTENCE_END_RE = re.compile(r"[.!?]+(?=\s|$)")
_PLACEHOLDER_RE = re.compile(r"\[[^\[\]\n]+\]")
_TITLE_RE = re.compile(r"<<[^<>\n]+>>")


def _bounds(rule: dict) -> tuple[int | None, int | None]:
    """(min, max) of a count rule; ``exact`` sets both. At least one bound is required."""
    if "exact" in rule:
        return int(rule["exact"]), int(rule["exact"])
    lo, hi = rule.get("min"), rule.get("max")
    if lo is None and hi is None:
        raise ValueError(f"rule {rule!r} needs 'exact', 'min' or 'max'")
    return (None if lo is None else int(lo)), (None if hi is None else int(hi))


def _count_check(what: str, n: int, rule: dict) -> Check:
    lo, hi = _bounds(rule)
    if lo is not None and hi is not None and lo == hi:
        return n == lo, f"{what}: found {n}, expected exactly {lo}"
    if lo is not None and n < lo:
        return False, f"{what}: found {n}, expected at least {lo}"
    if hi is not None and n > hi:
        return False, f"{what}: found {n}, expected at most {hi}"
    return True, f"{what}: found {n}"


def _required(rule: dict, key: str):
    if key not in rule:
        raise ValueError(f"rule {rule!r} needs a {key!r} parameter")
    return rule[key]


def _keyword_count(text: str, keyword: str) -> int:
    return len(re.findall(r"(?<!\w)" + re.escape(keyword) + r"(?!\w)", text, flags=re.IGNORECASE))


def _json_format(text: str, rule: dict) -> Check:
    candidates = [text.strip()]
    fence = _FENCE_RE.match(text)
    if rule.get("allow_fence", True) and fence:
        candidates.append(fence.group(1).strip())
    errors = []
    for c in candidates:
        try:
            json.loads(c)
            return True, "valid JSON"
        except json.JSONDecodeError as e:
            errors.append(str(e))
    return False, f"not valid JSON ({errors[-1]})"


def _bullet_count(text: str, rule: dict) -> Check:
    n = len(_BULLET_RE.findall(text))
    if rule.get("numbered", False):
        n += len(_NUMBERED_RE.findall(text))
    return _count_check("bullet points", n, rule)


def _section_count(text: str, rule: dict) -> Check:
    marker = rule.get("marker", "SECTION")
    n = len(re.findall(r"(?<!\w)" + re.escape(marker) + r"\s+\w+", text))
    return _count_check(f"'{marker}' sections", n, rule)


def _words(text: str) -> int:
    return len(_WORD_RE.findall(text))


def _sentences(text: str) -> int:
    parts = _SENTENCE_END_RE.split(text.strip())
    return sum(1 for p in parts if _WORD_RE.search(p))


def _paragraphs(text: str, rule: dict) -> int:
    sep = rule.get("separator")
    parts = text.split(sep) if sep else re.split(r"\n\s*\n", text)
    return sum(1 for p in parts if p.strip())


def _keywords_present(text: str, rule: dict) -> Check:
    keywords = _required(rule, "keywords")
    need = int(rule.get("min_count", 1))
    missing = [k for k in keywords if _keyword_count(text, k) < need]
    if missing:
        return False, f"keywords appearing fewer than {need} time(s): {missing}"
    return True, f"all keywords present: {list(keywords)}"


def _keywords_forbidden(text: str, rule: dict) -> Check:
    found = [k for k in _required(rule, "keywords") if _keyword_count(text, k)]
    return (False, f"forbidden keywords used: {found}") if found else (True, "no forbidden keyword")


def _all_lowercase(text: str, rule: dict) -> Check:
    bad = sorted({c for c in text if c.isupper()})
    return (False, f"upper-case letters found: {''.join(bad[:10])}") if bad else (True, "all lower case")


def _all_uppercase(text: str, rule: dict) -> Check:
    bad = sorted({c for c in text if c.islower()})
    return (False, f"lower-case letters found: {''.join(bad[:10])}") if bad else (True, "all upper case")


def _ends_with(text: str, rule: dict) -> Check:
    phrase = _required(rule, "phrase")
    tail = text.rstrip()
    if tail.endswith(phrase.strip()):
        return True, f"ends with {phrase!r}"
    return False, f"does not end with {phrase!r} (ends with {tail[-len(phrase) - 10:]!r})"


def _starts_with(text: str, rule: dict) -> Check:
    phrase = _required(rule, "phrase")
    head = text.lstrip()
    if head.startswith(phrase.strip()):
        return True, f"starts with {phrase!r}"
    return False, f"does not start with {phrase!r} (starts with {head[: len(phrase) + 10]!r})"


def _no_commas(text: str, rule: dict) -> Check:
    n = text.count(",")
    return (False, f"{n} comma(s) found") if n else (True, "no commas")


def _title(text: str, rule: dict) -> Check:
    m = _TITLE_RE.search(text)
    return (True, f"title {m.group(0)}") if m else (False, "no <<title>> found")


def _shorthand(base: str, bound: str) -> Callable[[str, dict], Check]:
    def check(text: str, rule: dict) -> Check:
        return RULES[base](text, {bound: _required(rule, "value"), **{k: v for k, v in rule.items() if k != "value"}})

    return check


RULES: dict[str, Callable[[str, dict], Check]] = {
    "json_format": _json_format,
    "bullet_count": _bullet_count,
    "section_count": _section_count,
    "word_count": lambda text, rule: _count_check("words", _words(text), rule),
    "sentence_count": lambda text, rule: _count_check("sentences", _sentences(text), rule),
    "paragraph_count": lambda text, rule: _count_check("paragraphs", _paragraphs(text, rule), rule),
    "keywords_present": _keywords_present,
    "keyword_frequency": lambda text, rule: _count_check(
        f"keyword {_required(rule, 'keyword')!r}", _keyword_count(text, rule["keyword"]), rule
    ),
    "keywords_forbidden": _keywords_forbidden,
    "all_lowercase": _all_lowercase,
    "all_uppercase": _all_uppercase,
    "ends_with": _ends_with,
    "starts_with": _starts_with,
    "no_commas": _no_commas,
    "placeholder_count": lambda text, rule: _count_check("placeholders", len(_PLACEHOLDER_RE.findall(text)), rule),
    "title": _title,
}
for _base, _unit in (("word_count", "words"), ("sentence_count", "sentences"), ("paragraph_count", "paragraphs")):
    RULES[f"min_{_unit}"] = _shorthand(_base, "min")
    RULES[f"max_{_unit}"] = _shorthand(_base, "max")


def check_rule(text: str, rule: dict) -> Check:
    """Run one rule on ``text``: (passed, reason). Unknown types raise ValueError naming the rule."""
    kind = rule.get("type") if isinstance(rule, dict) else None
    fn = RULES.get(kind)
    if fn is None:
        known = ", ".join(sorted(RULES))
        raise ValueError(f"unknown instruction rule type {kind!r} in rule {rule!r}; known types: {known}")
    return fn(text, rule)


def validate_rules(rules: list[dict]) -> None:
    """Raise ValueError naming the first rule with an unknown type or a missing parameter."""
    for rule in rules:
        check_rule("", rule)


def instruct_reward(completion: str, rules: list[dict], partial_credit: bool = False) -> RewardResult:
    """Check every rule on the completion's answer region; see the module docstring for the reward."""
    if not rules:
        raise ValueError("an instruction-following problem needs at least one rule")
    region = answer_region(completion)
    if region is None:
        validate_rules(rules)
        reason = "unclosed <think>: no answer after the reasoning"
        return RewardResult(0.0, 0, len(rules), [reason], {"rules": []})
    outcomes = []
    for rule in rules:
        ok, reason = check_rule(region, rule)
        outcomes.append({"type": rule["type"], "passed": ok, "reason": reason})
    passed = sum(o["passed"] for o in outcomes)
    reasons = [f"{o['type']}: {o['reason']}" for o in outcomes if not o["passed"]]
    if partial_credit:
        reward = passed / len(rules)
    else:
        reward = float(passed == len(rules))
    return RewardResult(reward, passed, len(rules), reasons, {"rules": outcomes})


@register_verifier("instruct")
def instruct_verifier(problem: dict, completion: str) -> RewardResult:
    """Registry entry: ``problem["rules"]`` (list of rule dicts), optional ``problem["partial_credit"]``."""
    if "rules" not in problem:
        raise KeyError(f"instruction problem has no 'rules' field (keys: {sorted(problem)})")
    return instruct_reward(completion, problem["rules"], bool(problem.get("partial_credit", False)))
