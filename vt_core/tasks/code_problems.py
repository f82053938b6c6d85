"""Code problems: complete ``f(x)`` from five input/output pairs; hidden call-based tests decide the reward.

A problem is one of 10 expression templates with one or two integer constants, e.g. ``x * x - 246`` or
``3 * x + 7``. The prompt shows f at x = 0, x = 1 and three more points in [2, X_MAX], listed from the
largest x down to x = 0, and ends HumanEval-style with the start of the answer (``RESPONSE_PREFIX``: an
open fence and ``def f(x):\n    return``), which the row also carries as ``response_prefix`` so the
"code" verifier runs prefix + reply. Six other points in [0, X_MAX] are the hidden tests
(``{"fn_name": "f", "inputs": [[x], ...], "outputs": [y, ...]}``, the APPS/TACO call-based format the
"code" verifier runs in the sandbox).

The task is sized for the shipped 0.87M-parameter model (measured: it does not learn the copy at all with
two-constant templates such as ``max(x, a) + b``, pairs in ascending order or a full ``def`` to write):
every constant can be read off f(0) and f(1) (copied, or a one-digit difference for the affine pair), the
pairs an answer needs sit right before it, and what is left to infer is which template the three other
points fit (``x + a`` and ``x * x + a`` agree at 0 and 1) and, for the affine pair, the slope.

Well-posed by construction: the shown points are redrawn until every (template, constants) in the whole
problem space that fits them also passes the hidden tests, so the hidden tests never ask for something
the examples leave open. Identity: ``problem_id`` names (template, constants); the split goes further and
treats two problems computing the same function on [0, X_MAX] as one, so no held-out function is ever
trained on. Held-out: 1,024 distinct problems drawn by HELDOUT_SEED (shipped); train: TRAIN_SIZE rows
drawn i.i.d. by TRAIN_SEED from the remaining problems (a problem may recur with other shown points),
regenerated on demand.

SFT traces: ``solution`` is the reference program; ``teacher_rows`` rewrites a fraction of them as a
simulated imperfect teacher would (a sibling template that only agrees at x = 0 and 1, or a constant one
off), which is what the main job's warm start trains on (``--warmstart.teacher_accuracy``, 0.75): SFT then
imitates the slips and RL with the hidden tests as reward can remove them.
"""
from __future__ import annotations

import copy
import functools
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from vt_core.tasks import check_split, draw_problems, heldout_path, read_task_file

X_MAX = 30
NUM_SHOWN = 5
NUM_HIDDEN = 6
HELDOUT_SIZE = 1024
TRAIN_SIZE = 20000
HELDOUT_SEED = 7101
TRAIN_SEED = 7102
TEACHER_SEED = 7103
PROMPT_HEADER = "Write f(x):"
RESPONSE_PREFIX = "```python\ndef f(x):\n    return"
_SHOWN_TRIES = 30


@dataclass(frozen=True)
class Template:
    """An expression with constants a, b: ``expr`` (Python, with {a} and {b}), their inclusive ranges and
    ``fn(x, a, b)``, the same expression on numpy int64 arrays (Python's // and % semantics)."""

    name: str
    expr: str
    a_range: tuple[int, int]
    b_range: tuple[int, int]
    fn: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


TEMPLATES: tuple[Template, ...] = (
    Template("add", "x + {a}", (1, 299), (0, 0), lambda x, a, b: x + a),
    Template("square_add", "x * x + {a}", (1, 299), (0, 0), lambda x, a, b: x * x + a),
    Template("sub", "x - {a}", (1, 299), (0, 0), lambda x, a, b: x - a),
    Template("square_sub", "x * x - {a}", (1, 299), (0, 0), lambda x, a, b: x * x - a),
    Template("sub_from", "{a} - x", (1, 299), (0, 0), lambda x, a, b: a - x),
    Template("square_sub_from", "{a} - x * x", (1, 299), (0, 0), lambda x, a, b: a - x * x),
    Template("scale", "{a} * x", (2, 299), (0, 0), lambda x, a, b: a * x),
    Template("square_scale", "{a} * x * x", (2, 299), (0, 0), lambda x, a, b: a * x * x),
    Template("affine", "{a} * x + {b}", (2, 9), (1, 99), lambda x, a, b: a * x + b),
    Template("affine_minus", "{a} * x - {b}", (2, 9), (1, 99), lambda x, a, b: a * x - b),
)
TEMPLATE_BY_NAME = {t.name: t for t in TEMPLATES}


@functools.lru_cache(maxsize=1)
def _space() -> tuple[dict[str, list[tuple[int, ...]]], dict[tuple[int, int], np.ndarray]]:
    """Values on 0..X_MAX of every (template, a, b) of the problem space: per template (row-major over
    a, then b) as tuples, and grouped by (f(0), f(1)), the two points every prompt shows, as int64 arrays."""
    xs = np.arange(X_MAX + 1, dtype=np.int64)
    per_template, blocks = {}, []
    for t in TEMPLATES:
        a, b = np.meshgrid(np.arange(t.a_range[0], t.a_range[1] + 1), np.arange(t.b_range[0], t.b_range[1] + 1),
                           indexing="ij")
        block = t.fn(xs[None, :], a.reshape(-1, 1).astype(np.int64), b.reshape(-1, 1).astype(np.int64))
        per_template[t.name] = [tuple(v) for v in block.tolist()]
        blocks.append(block)
    values = np.concatenate(blocks)
    order = np.lexsort((values[:, 1], values[:, 0]))
    keys = values[order, :2]
    starts = np.flatnonzero(np.r_[True, (keys[1:] != keys[:-1]).any(axis=1)])
    ends = np.r_[starts[1:], len(order)]
    by_first_two = {(int(keys[i, 0]), int(keys[i, 1])): values[order[i:j]] for i, j in zip(starts, ends)}
    return per_template, by_first_two


def function_values(template: str, a: int, b: int) -> tuple[int, ...]:
    """f(0), ..., f(X_MAX) of the problem (template, a, b)."""
    t = TEMPLATE_BY_NAME[template]
    if not (t.a_range[0] <= a <= t.a_range[1] and t.b_range[0] <= b <= t.b_range[1]):
        raise ValueError(f"constants ({a}, {b}) out of range for template {template!r}: "
                         f"a in {t.a_range}, b in {t.b_range}")
    n_b = t.b_range[1] - t.b_range[0] + 1
    return _space()[0][template][(a - t.a_range[0]) * n_b + (b - t.b_range[0])]


def function_key(row: dict) -> str:
    """The split identity of a problem: its values on 0..X_MAX (equal functions are the same problem)."""
    a, b = row["constants"]
    return ",".join(map(str, function_values(row["template"], a, b)))


def _confusers(values: tuple[int, ...]) -> list[int]:
    """For every other function of the space agreeing with ``values`` at 0 and 1: the bit mask of the
    points where it differs."""
    differs = _space()[1][values[:2]] != np.asarray(values, dtype=np.int64)
    masks = differs.astype(np.int64) @ (np.int64(1) << np.arange(X_MAX + 1, dtype=np.int64))
    return [int(m) for m in masks if m]


def _fits(confusers: list[int], shown: list[int], hidden: list[int]) -> bool:
    shown_mask = sum(1 << x for x in shown)
    hidden_mask = sum(1 << x for x in hidden)
    return not any(m & shown_mask == 0 and m & hidden_mask for m in confusers)


def is_well_posed(values: tuple[int, ...], shown: list[int], hidden: list[int]) -> bool:
    """True when every problem of the space that matches ``values`` at the ``shown`` points (which include
    0 and 1) also matches them at the ``hidden`` points."""
    return _fits(_confusers(values), shown, hidden)


def _draw(rng: random.Random) -> dict:
    """One well-posed problem: a uniform template, then constants and points redrawn until well-posed."""
    t = rng.choice(TEMPLATES)
    while True:
        a, b = rng.randint(*t.a_range), rng.randint(*t.b_range)
        values = function_values(t.name, a, b)
        confusers = _confusers(values)
        for _ in range(_SHOWN_TRIES):
            points = rng.sample(range(2, X_MAX + 1), NUM_SHOWN - 2 + NUM_HIDDEN)
            shown = [0, 1, *sorted(points[: NUM_SHOWN - 2])]
            hidden = sorted(points[NUM_SHOWN - 2:])
            if _fits(confusers, shown, hidden):
                return {"template": t.name, "constants": [a, b], "shown": shown, "hidden": hidden, "values": values}


def expression(template: str, a: int, b: int) -> str:
    """The reference expression, e.g. ``3 * x + 7``."""
    return TEMPLATE_BY_NAME[template].expr.format(a=a, b=b)


# A teacher's plausible slips (SFT data from an imperfect teacher, see ``teacher_rows``): per template, the
# sibling expression that agrees with it at x = 0 and x = 1 (so with the two points a careless reader checks)
# and differs at every x >= 2, which is where the hidden tests are.
SLIP_EXPR = {
    "add": "x * x + {a}", "square_add": "x + {a}", "sub": "x * x - {a}", "square_sub": "x - {a}",
    "sub_from": "{a} - x * x", "square_sub_from": "{a} - x", "scale": "{a} * x * x", "square_scale": "{a} * x",
    "affine": "{a} * x * x + {b}", "affine_minus": "{a} * x * x - {b}",
}


def teacher_rows(rows: Iterable[dict], accuracy: float, seed: int) -> list[dict]:
    """The rows with ``solution`` as a simulated imperfect teacher writes it: right with probability
    ``accuracy``, else one slip, half the time the template's sibling (``SLIP_EXPR``) and half the time the
    last constant one off (either way). Every slip fails the hidden tests. Deterministic in ``seed``; a
    slipped row gets ``teacher_slip`` ("template" | "constant").

    Real SFT traces are a teacher's unverified samples. With a perfect teacher the hidden tests only confirm
    what SFT already imitates; with an imperfect one they also tell right traces from slips, which SFT cannot.
    """
    if not 0.0 < accuracy <= 1.0:
        raise ValueError(f"teacher accuracy must be in (0, 1], got {accuracy}")
    rng = random.Random(seed)
    out = []
    for row in rows:
        row = dict(row)
        if rng.random() >= accuracy:
            a, b = row["constants"]
            if rng.random() < 0.5:
                slip = SLIP_EXPR[row["template"]].format(a=a, b=b)
                row["solution"], row["teacher_slip"] = f" {slip}\n```", "template"
            else:
                step = rng.choice((-1, 1))
                if TEMPLATE_BY_NAME[row["template"]].b_range != (0, 0):
                    b = b + step if b + step >= 1 else b + 1
                else:
                    a = a + step if a + step >= 1 else a + 1
                row["solution"], row["teacher_slip"] = f" {expression(row['template'], a, b)}\n```", "constant"
        out.append(row)
    return out


def _row(problem: dict, split: str, index: int) -> dict:
    template, (a, b), values = problem["template"], problem["constants"], problem["values"]
    pairs = "\n".join(f"f({x}) = {values[x]}" for x in sorted(problem["shown"], reverse=True))
    return {
        "id": f"code-{split}-{index:05d}",
        "problem_id": f"{template}({a},{b})",
        "domain": "code",
        "verifier": "code",
        "subdomain": template,
        "split": split,
        "prompt": f"{PROMPT_HEADER}\n{pairs}\n{RESPONSE_PREFIX}",
        "response_prefix": RESPONSE_PREFIX,
        "solution": f" {expression(template, a, b)}\n```",
        "tests": {"fn_name": "f", "inputs": [[x] for x in problem["hidden"]],
                  "outputs": [values[x] for x in problem["hidden"]]},
        "template": template,
        "constants": [a, b],
        "examples": [[x, values[x]] for x in problem["shown"]],
    }


def generate_code_tasks(n: int, seed: int, exclude: Iterable[dict] = (), split: str = "train",
                        unique: bool | None = None) -> list[dict]:
    """``n`` rows drawn from ``seed``; no row computes the same function as a row of ``exclude``.

    ``unique`` (default: True for held-out, False for train) makes every row a distinct problem.
    """
    check_split(split)
    unique = split == "heldout" if unique is None else unique
    banned = {function_key(r) for r in exclude}
    problems = draw_problems(_draw, lambda p: ",".join(map(str, p["values"])), n, seed, exclude=banned, unique=unique)
    return [_row(p, split, i) for i, p in enumerate(problems)]


@functools.lru_cache(maxsize=2)
def _load(split: str) -> tuple[dict, ...]:
    if split == "heldout":
        return tuple(read_task_file(heldout_path("code")))
    return tuple(generate_code_tasks(TRAIN_SIZE, TRAIN_SEED, exclude=_load("heldout"), split="train"))


def load_code_tasks(split: str) -> list[dict]:
    """The embedded code tasks: "heldout" (1,024 shipped rows) or "train" (TRAIN_SIZE rows from TRAIN_SEED)."""
    return copy.deepcopy(list(_load(check_split(split))))


def make_heldout() -> list[dict]:
    """The held-out split as shipped (what make_tasks writes)."""
    return generate_code_tasks(HELDOUT_SIZE, HELDOUT_SEED, split="heldout")


def check_solution(row: dict, code: str) -> bool:
    """Run ``code`` (a program, or a reply: the row's ``response_prefix`` + reply holding a fenced block)
    in-process against the row's hidden tests.

    For tests only: this executes the code with ``exec`` and no sandbox; the trainer uses the "code" verifier.
    """
    if not code.lstrip().startswith(("def ", "```")):
        code = row.get("response_prefix", "") + code
    if "```" in code:
        from vt_core.rewards.code_formats import extract_code

        code = extract_code(code) or ""
    namespace: dict = {}
    exec(compile(code, f"<{row['id']}>", "exec"), namespace)  # noqa: S102 (trusted reference code, tests only)
    fn = namespace.get(row["tests"]["fn_name"])
    if not callable(fn):
        return False
    return all(fn(*args) == out for args, out in zip(row["tests"]["inputs"], row["tests"]["outputs"]))
