"""STEM verifier: multiple-choice letters and numeric answers with a relative tolerance.

Only the answer region counts (text after the last ``</think>``; an unclosed ``<think>`` scores 0).

Multiple choice (the gold ``answer`` is a single letter A-J, or the problem has ``choices``): the letter
is taken, in this order of preference, from the last ``\\boxed{C}`` (also ``\\boxed{(C)}``,
``\\boxed{\\text{C}}``), the last "answer is C" / "Answer: (C)" / "answer: **C**" / "option C" phrase, and
finally a reply that is nothing but the letter (``"C"``, ``"(C)"``, ``"C."``). Letters beyond the number of
``choices`` are not accepted.

Numeric (any other gold): the answer is the last ``\\boxed{}``, else the value after the last "answer is" /
"Answer:", else the last number in the region. Numbers are read with units and decoration stripped:
``9.8 m/s^2``, ``3.0e8``, ``3.0 \\times 10^{8}``, ``3 x 10^8``, ``1,200 J``, ``-4.5``, ``\\frac{3}{4}``,
``3/4``, ``45%``. Correct when ``|pred - gold| <= max(rel_tol * |gold|, abs_tol)`` (``rel_tol`` default
1e-2, ``abs_tol`` default 1e-8). A percentage on either side may also be read as a fraction
(``45%`` matches ``0.45`` and ``45``). A gold that is not a number is compared as normalized text.

Problem fields: ``answer``, optional ``choices`` (list), ``rel_tol``, ``abs_tol``.
"""

from __future__ import annotations

import math
import re

from vt_core.rewards.base import RewardResult
from vt_core.rewards.math_verifier import answer_region, extract_boxed
from vt_core.rewards.registry import register_verifier

LETTERS = "ABCDEFGHIJ"
DEFAULT_REL_TOL = 1e-2
DEFAULT_ABS_TOL = 1e-8

_ANSWER_PHRASE = r"(?i:answer|choice|option)\s*(?i:is|:|=)?\s*(?i:option|choice)?\s*:?"  # letter stays upper case
_LETTER_PHRASE_RE = re.compile(_ANSWER_PHRASE + r"\s*[*_]*\s*[\(\[]?\s*([A-J])\s*[\)\]]?(?![A-Za-z])")
_BARE_LETTER_RE = re.compile(r"^\s*[*_]*\s*[\(\[]?\s*([A-J])\s*[\)\]]?\s*[.:]?\s*[*_]*\s*$")
_BOXED_LETTER_RE = re.compile(r"^\s*(?:\\text\s*\{\s*|\\mathrm\s*\{\s*)?[\(\[]?\s*([A-J])\s*[\)\]]?\s*\}?\s*$")
_UNIT_POWER_RE = re.compile(r"(?<=[A-Za-z])\s*\^\s*\{?\s*[-+]?\d+\s*\}?")  # the 2 of m/s^2 is no answer
_NUMERIC_PHRASE_RE = re.compile(r"answer\s*(?:is|:|=)\s*", re.IGNORECASE)

_NUM = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?(?:[eE][-+]?\d+)?|[-+]?\.\d+(?:[eE][-+]?\d+)?"
_TIMES_POW = r"\s*(?:\\times|\\cdot|×|\*|x)\s*10\s*\^\s*\{?\s*([-+]?\d+)\s*\}?"
_NUMBER_RE = re.compile(
    r"\\[dt]?frac\s*\{\s*(" + _NUM + r")\s*\}\s*\{\s*(" + _NUM + r")\s*\}"  # \frac{a}{b}
    r"|(" + _NUM + r")\s*/\s*(" + _NUM + r")(?![\d.])"  # a/b
    r"|(" + _NUM + r")(?:" + _TIMES_POW + r")?(\s*\\?%)?"  # a, a x 10^k, a%
)


def _to_float(text: str) -> float:
    return float(text.replace(",", ""))


def parse_numbers(text: str) -> list[tuple[float, bool]]:
    """All numbers in ``text`` as (value, is_percent), in order; units and LaTeX decoration ignored."""
    text = text.replace("\u2212", "-").replace("{,}", ",").replace("\\!", "").replace("\\,", "")
    text = _UNIT_POWER_RE.sub(" ", text)
    out = []
    for m in _NUMBER_RE.finditer(text):
        frac_num, frac_den, slash_num, slash_den, num, exp, pct = m.groups()
        if frac_num is not None or slash_num is not None:
            num_s, den_s = (frac_num, frac_den) if frac_num is not None else (slash_num, slash_den)
            den = _to_float(den_s)
            if den == 0:
                continue
            out.append((_to_float(num_s) / den, False))
            continue
        value = _to_float(num)
        if exp is not None:
            value *= 10.0 ** int(exp)
        out.append((value, pct is not None))
    return out


def parse_number(text: str) -> tuple[float, bool] | None:
    """The last number in ``text`` as (value, is_percent), or None."""
    nums = parse_numbers(text)
    return nums[-1] if nums else None


def extract_choice(text: str, n_choices: int = len(LETTERS)) -> str | None:
    """The multiple-choice letter a reply commits to (see the module docstring), or None."""
    valid = LETTERS[:n_choices]
    boxed = extract_boxed(text)
    if boxed is not None:
        m = _BOXED_LETTER_RE.match(boxed)
        if m and m.group(1).upper() in valid:
            return m.group(1).upper()
    phrases = [m.group(1) for m in _LETTER_PHRASE_RE.finditer(text) if m.group(1) in valid]
    if phrases:
        return phrases[-1]
    m = _BARE_LETTER_RE.match(text)
    if m and m.group(1) in valid:
        return m.group(1)
    return None


def extract_numeric_answer(text: str) -> tuple[tuple[float, bool], str] | None:
    """The numeric answer of a reply as ((value, is_percent), source text), or None.

    Preference: the first number in the last box, else the first number after the last "answer is" /
    "Answer:", else the last number of the text.
    """
    boxed = extract_boxed(text)
    if boxed is not None:
        nums = parse_numbers(boxed)
        return (nums[0], boxed) if nums else None
    for m in reversed(list(_NUMERIC_PHRASE_RE.finditer(text))):
        tail = text[m.end() :]
        nums = parse_numbers(tail)
        if nums:
            return nums[0], tail.strip()
    nums = parse_numbers(text)
    return (nums[-1], text.strip()) if nums else None


def _candidates(value: float, is_percent: bool) -> list[float]:
    return [value, value / 100.0] if is_percent else [value]


def numbers_match(pred: tuple[float, bool], gold: tuple[float, bool], rel_tol: float, abs_tol: float) -> bool:
    """Whether two parsed numbers agree within ``max(rel_tol * |gold|, abs_tol)`` (percent read both ways)."""
    golds = _candidates(*gold)
    preds = _candidates(*pred)
    if gold[1] and not pred[1]:
        preds = preds + [pred[0] * 100.0]
    for g in golds:
        for p in preds:
            if math.isfinite(p) and abs(p - g) <= max(rel_tol * abs(g), abs_tol):
                return True
    return False


def _normalize_text(text: str) -> str:
    text = re.sub(r"\\text\s*\{([^}]*)\}", r"\1", text)
    return re.sub(r"[\s$.]+", " ", text).strip().lower()


def stem_reward(
    completion: str,
    gold,
    choices: list | None = None,
    rel_tol: float = DEFAULT_REL_TOL,
    abs_tol: float = DEFAULT_ABS_TOL,
) -> RewardResult:
    """Reward 1.0 when the completion's answer matches ``gold`` (a letter, or a number / numeric string)."""
    region = answer_region(completion)
    if region is None:
        return RewardResult(0.0, 0, 1, ["unclosed <think>: no answer after the reasoning"], {"answer": None})
    gold_s = str(gold).strip()
    is_choice = choices is not None or (len(gold_s) == 1 and gold_s.upper() in LETTERS)
    if is_choice:
        n = len(choices) if choices is not None else len(LETTERS)
        gold_letter = gold_s.strip("() ").upper()
        if len(gold_letter) != 1 or gold_letter not in LETTERS[:n]:
            raise ValueError(f"multiple-choice gold answer {gold!r} is not one of {LETTERS[:n]}")
        letter = extract_choice(region, n)
        if letter is None:
            return RewardResult(0.0, 0, 1, ["no answer letter found"], {"answer": None})
        ok = letter == gold_letter
        reasons = [] if ok else [f"answered {letter}, expected {gold_letter}"]
        return RewardResult(float(ok), int(ok), 1, reasons, {"answer": letter})
    gold_num = (float(gold), False) if isinstance(gold, (int, float)) else parse_number(gold_s)
    if gold_num is None:
        pred = extract_boxed(region) or region
        ok = _normalize_text(pred) == _normalize_text(gold_s)
        reasons = [] if ok else ["answer text differs from the gold answer"]
        return RewardResult(float(ok), int(ok), 1, reasons, {"answer": pred})
    found = extract_numeric_answer(region)
    if found is None:
        return RewardResult(0.0, 0, 1, ["no numeric answer found"], {"answer": None})
    pred_num, source = found
    ok = numbers_match(pred_num, gold_num, rel_tol, abs_tol)
    extra = {"answer": source[-200:], "value": pred_num[0], "gold_value": gold_num[0]}
    if ok:
        return RewardResult(1.0, 1, 1, [], extra)
    return RewardResult(0.0, 0, 1, [f"{pred_num[0]:g} is not within tolerance of {gold_num[0]:g}"], extra)


@register_verifier("stem")
def stem_verifier(problem: dict, completion: str) -> RewardResult:
    """Registry entry: ``problem["answer"]``, optional ``choices``, ``rel_tol``, ``abs_tol``."""
    if "answer" not in problem:
        raise KeyError(f"STEM problem has no 'answer' field (keys: {sorted(problem)})")
    return stem_reward(
        completion,
        problem["answer"],
        choices=problem.get("choices"),
        rel_tol=problem.get("rel_tol", DEFAULT_REL_TOL),
        abs_tol=problem.get("abs_tol", DEFAULT_ABS_TOL),
    )
