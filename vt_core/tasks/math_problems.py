"""Math problems with ``\\boxed{}`` answers (integers or fractions), in three subdomains.

- arithmetic: ``a + b * c``, ``a * b - c``, ``(a + b) * c``, fraction sums and products;
- algebra: linear equations (one side or both sides; the answer may be a fraction), evaluating a quadratic;
- number_theory: remainders, gcd (Euclid's steps), lcm, digit sums, counting divisors.

The subdomain is drawn uniformly, then the kind within it, then the numbers. The reference solution shows
the few steps and ends with the boxed answer; ``answer`` holds the same answer as LaTeX (``\\frac{p}{q}``
for a fraction), the form the "math" verifier compares with math-verify. ``problem_id`` is the kind and
its numbers: the split never puts one problem in both train and held-out.
"""

from __future__ import annotations

import copy
import functools
import math
import random
from collections.abc import Iterable
from fractions import Fraction

from vt_core.tasks import check_split, draw_problems, heldout_path, read_task_file

HELDOUT_SIZE = 256
TRAIN_SIZE = 2000
HELDOUT_SEED = 7201
TRAIN_SEED = 7202


def latex(q: Fraction | int) -> str:
    """An answer as LaTeX: ``12``, ``-3``, ``\\frac{7}{12}``, ``-\\frac{3}{2}``."""
    q = Fraction(q)
    if q.denominator == 1:
        return str(q.numerator)
    sign = "-" if q < 0 else ""
    return f"{sign}\\frac{{{abs(q.numerator)}}}{{{q.denominator}}}"


def plain(q: Fraction | int) -> str:
    """A number as it appears in a step: ``12`` or ``7/12``."""
    q = Fraction(q)
    return str(q.numerator) if q.denominator == 1 else f"{q.numerator}/{q.denominator}"


def _poly(coeffs: list[int]) -> str:
    """Coefficients (highest power first) of a polynomial in x, written the usual way: ``3x^2 - x + 1``."""
    terms = []
    for power, c in zip(range(len(coeffs) - 1, -1, -1), coeffs):
        if c == 0:
            continue
        var = {0: "", 1: "x"}.get(power, f"x^{power}")
        mag = str(abs(c)) if abs(c) != 1 or not var else ""
        terms.append(("-" if c < 0 else "+", mag + var))
    if not terms:
        return "0"
    head = ("-" if terms[0][0] == "-" else "") + terms[0][1]
    return " ".join([head] + [f"{sign} {t}" for sign, t in terms[1:]])


def _paren(n: int) -> str:
    return f"({n})" if n < 0 else str(n)


def _nonzero(rng: random.Random, lo: int, hi: int) -> int:
    while True:
        v = rng.randint(lo, hi)
        if v:
            return v


# Each kind: rng -> (numbers, question, solution steps, answer).
Problem = tuple[tuple[int, ...], str, list[str], Fraction]


def _add_mul(rng: random.Random) -> Problem:
    a, b, c = rng.randint(1, 99), rng.randint(2, 19), rng.randint(2, 9)
    steps = [f"{b} * {c} = {b * c}", f"{a} + {b * c} = {a + b * c}"]
    return (a, b, c), f"Compute {a} + {b} * {c}.", steps, Fraction(a + b * c)


def _mul_sub(rng: random.Random) -> Problem:
    a, b, c = rng.randint(2, 19), rng.randint(2, 9), rng.randint(1, 99)
    steps = [f"{a} * {b} = {a * b}", f"{a * b} - {c} = {a * b - c}"]
    return (a, b, c), f"Compute {a} * {b} - {c}.", steps, Fraction(a * b - c)


def _paren_mul(rng: random.Random) -> Problem:
    a, b, c = rng.randint(1, 49), rng.randint(1, 49), rng.randint(2, 9)
    steps = [f"{a} + {b} = {a + b}", f"{a + b} * {c} = {(a + b) * c}"]
    return (a, b, c), f"Compute ({a} + {b}) * {c}.", steps, Fraction((a + b) * c)


def _fractions(rng: random.Random, op: str) -> Problem:
    p, q, r, s = rng.randint(1, 9), rng.randint(2, 12), rng.randint(1, 9), rng.randint(2, 12)
    if op == "+":
        d = q * s // math.gcd(q, s)
        steps = [f"{p}/{q} + {r}/{s} = {p * d // q}/{d} + {r * d // s}/{d} = {p * d // q + r * d // s}/{d}"]
        value = Fraction(p, q) + Fraction(r, s)
    else:
        steps = [f"{p}/{q} * {r}/{s} = {p * r}/{q * s}"]
        value = Fraction(p, q) * Fraction(r, s)
    if not steps[0].endswith(f" = {plain(value)}"):
        steps.append(f"= {plain(value)}")
    return (p, q, r, s), f"Compute {p}/{q} {op} {r}/{s}.", steps, value


def _divide(r: int, k: int) -> list[str]:
    """The last step of solving ``k x = r``: ``x = r/k`` (simplified when it simplifies); none when k = 1."""
    if k == 1:
        return []
    x, quotient = Fraction(r, k), f"{r}/{_paren(k)}"
    return [f"x = {quotient} = {plain(x)}" if quotient != plain(x) else f"x = {quotient}"]


def _linear(rng: random.Random) -> Problem:
    a, b = _nonzero(rng, -12, 12), _nonzero(rng, -50, 50)
    c = a * rng.randint(-20, 20) + b if rng.random() < 0.7 else rng.randint(-60, 60)
    steps = [f"{_poly([a, 0])} = {c} {'-' if b > 0 else '+'} {abs(b)} = {c - b}", *_divide(c - b, a)]
    return (a, b, c), f"Solve for x: {_poly([a, b])} = {c}.", steps, Fraction(c - b, a)


def _linear_both(rng: random.Random) -> Problem:
    a, c = rng.sample([v for v in range(-9, 10) if v], 2)
    b, d = rng.randint(-30, 30), rng.randint(-30, 30)
    steps = [f"{_poly([a - c, 0])} = {d - b}", *_divide(d - b, a - c)]
    return (a, b, c, d), f"Solve for x: {_poly([a, b])} = {_poly([c, d])}.", steps, Fraction(d - b, a - c)


def _evaluate(rng: random.Random) -> Problem:
    a, b, c, v = _nonzero(rng, -5, 5), _nonzero(rng, -9, 9), rng.randint(-20, 20), rng.randint(-6, 6)
    value = a * v * v + b * v + c
    steps = [f"{a} * {v * v} + {_paren(b)} * {_paren(v)} + {_paren(c)}",
             f"= {a * v * v} + {_paren(b * v)} + {_paren(c)} = {value}"]
    return (a, b, c, v), f"Evaluate {_poly([a, b, c])} at x = {v}.", steps, Fraction(value)


def _remainder(rng: random.Random) -> Problem:
    n, m = rng.randint(20, 999), rng.randint(2, 19)
    steps = [f"{n} = {m} * {n // m} + {n % m}"]
    return (n, m), f"What is the remainder when {n} is divided by {m}?", steps, Fraction(n % m)


def _euclid(rng: random.Random) -> tuple[int, int, int, list[str]]:
    g = rng.randint(1, 12)
    a, b = g * rng.randint(2, 15), g * rng.randint(2, 15)
    if a == b:
        b += g
    steps, x, y = [], max(a, b), min(a, b)
    while y:
        steps.append(f"{x} = {x // y} * {y} + {x % y}")
        x, y = y, x % y
    return a, b, x, steps


def _gcd(rng: random.Random) -> Problem:
    a, b, g, steps = _euclid(rng)
    return (a, b), f"Find the greatest common divisor of {a} and {b}.", [*steps, f"gcd = {g}"], Fraction(g)


def _lcm(rng: random.Random) -> Problem:
    a, b, g, steps = _euclid(rng)
    steps.append(f"lcm = {a} * {b} / {g} = {a * b // g}")
    return (a, b), f"Find the least common multiple of {a} and {b}.", steps, Fraction(a * b // g)


def _digit_sum(rng: random.Random) -> Problem:
    n = rng.randint(100, 99999)
    digits = [int(ch) for ch in str(n)]
    steps = [" + ".join(map(str, digits)) + f" = {sum(digits)}"]
    return (n,), f"What is the sum of the digits of {n}?", steps, Fraction(sum(digits))


def _divisors(rng: random.Random) -> Problem:
    n = rng.randint(2, 120)
    divs = [d for d in range(1, n + 1) if n % d == 0]
    steps = [f"divisors: {', '.join(map(str, divs))}", f"count = {len(divs)}"]
    return (n,), f"How many positive divisors does {n} have?", steps, Fraction(len(divs))


SUBDOMAINS = {
    "arithmetic": {"add_mul": _add_mul, "mul_sub": _mul_sub, "paren_mul": _paren_mul,
                   "frac_add": lambda rng: _fractions(rng, "+"), "frac_mul": lambda rng: _fractions(rng, "*")},
    "algebra": {"linear": _linear, "linear_both": _linear_both, "evaluate": _evaluate},
    "number_theory": {"remainder": _remainder, "gcd": _gcd, "lcm": _lcm, "digit_sum": _digit_sum,
                      "divisors": _divisors},
}


def _draw(rng: random.Random) -> dict:
    subdomain = rng.choice(sorted(SUBDOMAINS))
    kind = rng.choice(sorted(SUBDOMAINS[subdomain]))
    numbers, question, steps, value = SUBDOMAINS[subdomain][kind](rng)
    return {"subdomain": subdomain, "kind": kind, "problem_id": f"{kind}({','.join(map(str, numbers))})",
            "prompt": question, "steps": steps, "answer": latex(value)}


def _row(problem: dict, split: str, index: int) -> dict:
    return {
        "id": f"math-{split}-{index:05d}",
        "problem_id": problem["problem_id"],
        "domain": "math",
        "verifier": "math",
        "subdomain": problem["subdomain"],
        "split": split,
        "prompt": problem["prompt"],
        "solution": "\n".join(problem["steps"]) + f"\n\\boxed{{{problem['answer']}}}",
        "answer": problem["answer"],
        "kind": problem["kind"],
    }


def generate_math_tasks(n: int, seed: int, exclude: Iterable[dict] = (), split: str = "train") -> list[dict]:
    """``n`` distinct problems drawn from ``seed``, none with a ``problem_id`` of a row in ``exclude``."""
    check_split(split)
    banned = {r["problem_id"] for r in exclude}
    problems = draw_problems(_draw, lambda p: p["problem_id"], n, seed, exclude=banned)
    return [_row(p, split, i) for i, p in enumerate(problems)]


def make_heldout() -> list[dict]:
    """The held-out split as shipped (what make_tasks writes)."""
    return generate_math_tasks(HELDOUT_SIZE, HELDOUT_SEED, split="heldout")


@functools.lru_cache(maxsize=2)
def _load(split: str) -> tuple[dict, ...]:
    if split == "heldout":
        return tuple(read_task_file(heldout_path("math")))
    return tuple(generate_math_tasks(TRAIN_SIZE, TRAIN_SEED, exclude=_load("heldout"), split="train"))


def load_math_tasks(split: str) -> list[dict]:
    """The embedded math tasks: "heldout" (256 shipped rows) or "train" (TRAIN_SIZE rows from TRAIN_SEED)."""
    return copy.deepcopy(list(_load(check_split(split))))
