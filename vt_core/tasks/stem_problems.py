"""STEM problems: one-formula physics and chemistry questions, as multiple choice (A-D) or as a number with units.

Each kind applies one formula (v = d / t, F = m a, KE = m v^2 / 2, V = I R, n = m / M, c = n / V, ...)
to numbers chosen so the result is exact to at most three decimals. Half of the problems are multiple
choice: the right value and three distractors from the usual slips (the inverse formula, a sum instead of a
product, a missing factor), shuffled; the answer is the letter. The others ask for the number and unit:
``answer`` is the number (the "stem" verifier reads ``12 N`` or ``\\boxed{12 N}`` with a 1% tolerance),
``unit`` the unit. ``problem_id`` is the kind, its numbers and the format: train and held-out never share it.
"""

from __future__ import annotations

import copy
import functools
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction

from vt_core.tasks import check_split, draw_problems, heldout_path, read_task_file

HELDOUT_SIZE = 256
TRAIN_SIZE = 2000
HELDOUT_SEED = 7301
TRAIN_SEED = 7302
LETTERS = "ABCD"

# Molar masses (g/mol) from whole-number atomic masses (H 1, C 12, N 14, O 16, Na 23, Mg 24, S 32, Ca 40).
COMPOUNDS = {"H2O": 18, "CO2": 44, "O2": 32, "N2": 28, "CH4": 16, "NH3": 17, "NaOH": 40, "MgO": 40,
             "CaCO3": 100, "H2SO4": 98, "C2H6": 30, "SO2": 64}
ATOMIC_MASS = {"C": 12, "H": 1, "N": 14, "O": 16}


def fmt(x: Fraction | float | int) -> str:
    """A value with at most three decimals and no trailing zeros: ``12``, ``37.5``, ``0.125``."""
    text = f"{float(x):.3f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


@dataclass
class Question:
    """One worked question: the text, the formula step, the answer and unit, and distractor values."""

    subdomain: str
    numbers: tuple
    text: str
    work: str
    value: Fraction
    unit: str
    distractors: list[Fraction]


def _speed(rng: random.Random) -> Question:
    v, t = rng.randint(2, 40), rng.randint(2, 20)
    d = v * t
    return Question("physics", (d, t), f"A car travels {d} m in {t} s. What is its average speed?",
                    f"v = d / t = {d} / {t} = {v} m/s", Fraction(v), "m/s",
                    [Fraction(d * t), Fraction(d + t), Fraction(t, d)])


def _force(rng: random.Random) -> Question:
    m, a = rng.randint(2, 60), rng.randint(2, 12)
    return Question("physics", (m, a), f"A net force accelerates a {m} kg mass at {a} m/s^2. What is the force?",
                    f"F = m * a = {m} * {a} = {m * a} N", Fraction(m * a), "N",
                    [Fraction(m, a), Fraction(m + a), Fraction(a, m)])


def _weight(rng: random.Random) -> Question:
    m = rng.randint(2, 200)
    return Question("physics", (m,), f"What is the weight of a {m} kg object? Take g = 10 m/s^2.",
                    f"W = m * g = {m} * 10 = {10 * m} N", Fraction(10 * m), "N",
                    [Fraction(m, 10), Fraction(m + 10), Fraction(m)])


def _kinetic(rng: random.Random) -> Question:
    m, v = rng.randint(1, 20), rng.randint(1, 15)
    ke = Fraction(m * v * v, 2)
    return Question("physics", (m, v), f"A {m} kg ball moves at {v} m/s. What is its kinetic energy?",
                    f"KE = m * v^2 / 2 = {m} * {v * v} / 2 = {fmt(ke)} J", ke, "J",
                    [Fraction(m * v * v), Fraction(m * v, 2), Fraction(m * v)])


def _work(rng: random.Random) -> Question:
    f, d = rng.randint(2, 80), rng.randint(2, 30)
    return Question("physics", (f, d), f"A force of {f} N pushes a box {d} m along the force. How much work is done?",
                    f"W = F * d = {f} * {d} = {f * d} J", Fraction(f * d), "J",
                    [Fraction(f, d), Fraction(f + d), Fraction(d, f)])


def _power(rng: random.Random) -> Question:
    p, t = rng.randint(2, 50), rng.randint(2, 20)
    w = p * t
    return Question("physics", (w, t), f"A motor does {w} J of work in {t} s. What is its power?",
                    f"P = W / t = {w} / {t} = {p} W", Fraction(p), "W",
                    [Fraction(w * t), Fraction(t, w), Fraction(w + t)])


def _voltage(rng: random.Random) -> Question:
    i, r = rng.randint(1, 12), rng.randint(2, 60)
    return Question("physics", (i, r), f"A current of {i} A flows through a {r} ohm resistor. What is the voltage?",
                    f"V = I * R = {i} * {r} = {i * r} V", Fraction(i * r), "V",
                    [Fraction(r, i), Fraction(i + r), Fraction(i, r)])


def _current(rng: random.Random) -> Question:
    i, r = rng.randint(1, 12), rng.randint(2, 60)
    v = i * r
    return Question("physics", (v, r), f"A {v} V source drives a {r} ohm resistor. What current flows?",
                    f"I = V / R = {v} / {r} = {i} A", Fraction(i), "A",
                    [Fraction(v * r), Fraction(r, v), Fraction(v + r)])


def _density(rng: random.Random) -> Question:
    rho, vol = Fraction(rng.randint(2, 60), 4), rng.choice([2, 4, 5, 8, 10, 20, 25, 40])
    m = rho * vol
    text = f"A block of mass {fmt(m)} g has a volume of {vol} cm^3. What is its density?"
    work = f"density = m / V = {fmt(m)} / {vol} = {fmt(rho)} g/cm^3"
    return Question("physics", (fmt(m), vol), text, work, rho, "g/cm^3", [m * vol, vol / m, m + vol])


def _moles(rng: random.Random) -> Question:
    name = rng.choice(sorted(COMPOUNDS))
    n, mm = Fraction(rng.randint(1, 40), 4), COMPOUNDS[name]
    mass = n * mm
    text = f"How many moles are in {fmt(mass)} g of {name}? Its molar mass is {mm} g/mol."
    work = f"n = m / M = {fmt(mass)} / {mm} = {fmt(n)} mol"
    return Question("chemistry", (name, fmt(mass)), text, work, n, "mol", [mass * mm, mm / mass, mass + mm])


def _mass(rng: random.Random) -> Question:
    name = rng.choice(sorted(COMPOUNDS))
    n, mm = Fraction(rng.randint(1, 40), 4), COMPOUNDS[name]
    text = f"What is the mass of {fmt(n)} mol of {name}? Its molar mass is {mm} g/mol."
    work = f"m = n * M = {fmt(n)} * {mm} = {fmt(n * mm)} g"
    return Question("chemistry", (name, fmt(n)), text, work, n * mm, "g", [mm / n, n + mm, Fraction(mm)])


def _concentration(rng: random.Random) -> Question:
    c = Fraction(rng.randint(1, 40), 4)
    vol = rng.choice([Fraction(1, 10), Fraction(1, 5), Fraction(1, 4), Fraction(1, 2), Fraction(1), Fraction(2)])
    n = c * vol
    text = f"{fmt(n)} mol of salt is dissolved to make {fmt(vol)} L of solution. What is the concentration?"
    work = f"c = n / V = {fmt(n)} / {fmt(vol)} = {fmt(c)} mol/L"
    return Question("chemistry", (fmt(n), fmt(vol)), text, work, c, "mol/L", [n * vol, vol / n, n + vol])


def _molar_mass(rng: random.Random) -> Question:
    counts = {"C": rng.randint(1, 6), "H": rng.randint(1, 12), "N": rng.randint(0, 2), "O": rng.randint(0, 3)}
    parts = {el: k for el, k in counts.items() if k}
    name = "".join(el + (str(k) if k > 1 else "") for el, k in parts.items())
    total = sum(ATOMIC_MASS[el] * k for el, k in parts.items())
    given = ", ".join(f"{el} = {ATOMIC_MASS[el]}" for el in parts)
    terms = " + ".join(f"{k} * {ATOMIC_MASS[el]}" if k > 1 else str(ATOMIC_MASS[el]) for el, k in parts.items())
    return Question("chemistry", (name,), f"What is the molar mass of {name}? Atomic masses: {given}.",
                    f"M = {terms} = {total} g/mol", Fraction(total), "g/mol",
                    [Fraction(sum(ATOMIC_MASS[el] for el in parts)), Fraction(total + 16), Fraction(total * 2)])


KINDS: dict[str, Callable[[random.Random], Question]] = {
    "speed": _speed, "force": _force, "weight": _weight, "kinetic_energy": _kinetic, "work": _work,
    "power": _power, "voltage": _voltage, "current": _current, "density": _density,
    "moles": _moles, "mass": _mass, "concentration": _concentration, "molar_mass": _molar_mass,
}


def _options(q: Question, rng: random.Random) -> tuple[list[str], str]:
    """Four distinct option texts (value and unit) in shuffled order and the letter of the right one."""
    right = f"{fmt(q.value)} {q.unit}"
    options = [right]
    for d in [*q.distractors, q.value * 2, q.value / 2, q.value + 1, q.value * 10]:
        text = f"{fmt(d)} {q.unit}"
        if d > 0 and text not in options and abs(d - q.value) > Fraction(1, 50) * q.value:
            options.append(text)
        if len(options) == len(LETTERS):
            break
    rng.shuffle(options)
    return options, LETTERS[options.index(right)]


def _draw(rng: random.Random) -> dict:
    kind = rng.choice(sorted(KINDS))
    q = KINDS[kind](rng)
    choice = rng.random() < 0.5
    problem = {"subdomain": q.subdomain, "kind": kind, "format": "choice" if choice else "numeric",
               "problem_id": f"{kind}({','.join(map(str, q.numbers))})/{'choice' if choice else 'numeric'}"}
    if choice:
        options, letter = _options(q, rng)
        listing = "\n".join(f"{ch}) {text}" for ch, text in zip(LETTERS, options))
        problem.update(prompt=f"{q.text}\n{listing}", answer=letter, choices=options,
                       solution=f"{q.work}\n\\boxed{{{letter}}}")
    else:
        problem.update(prompt=f"{q.text} Give the answer in {q.unit}.", answer=fmt(q.value), unit=q.unit,
                       solution=f"{q.work}\n\\boxed{{{fmt(q.value)} {q.unit}}}")
    return problem


def _row(problem: dict, split: str, index: int) -> dict:
    row = {"id": f"stem-{split}-{index:05d}", "problem_id": problem["problem_id"], "domain": "stem",
           "verifier": "stem", "subdomain": problem["subdomain"], "split": split, "prompt": problem["prompt"],
           "solution": problem["solution"], "answer": problem["answer"]}
    for key in ("choices", "unit", "kind", "format"):
        if key in problem:
            row[key] = problem[key]
    return row


def generate_stem_tasks(n: int, seed: int, exclude: Iterable[dict] = (), split: str = "train") -> list[dict]:
    """``n`` distinct problems drawn from ``seed``, none with a ``problem_id`` of a row in ``exclude``."""
    check_split(split)
    banned = {r["problem_id"] for r in exclude}
    problems = draw_problems(_draw, lambda p: p["problem_id"], n, seed, exclude=banned)
    return [_row(p, split, i) for i, p in enumerate(problems)]


def make_heldout() -> list[dict]:
    """The held-out split as shipped (what make_tasks writes)."""
    return generate_stem_tasks(HELDOUT_SIZE, HELDOUT_SEED, split="heldout")


@functools.lru_cache(maxsize=2)
def _load(split: str) -> tuple[dict, ...]:
    if split == "heldout":
        return tuple(read_task_file(heldout_path("stem")))
    return tuple(generate_stem_tasks(TRAIN_SIZE, TRAIN_SEED, exclude=_load("heldout"), split="train"))


def load_stem_tasks(split: str) -> list[dict]:
    """The embedded STEM tasks: "heldout" (256 shipped rows) or "train" (TRAIN_SIZE rows from TRAIN_SEED)."""
    return copy.deepcopy(list(_load(check_split(split))))
