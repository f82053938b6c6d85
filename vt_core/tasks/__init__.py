"""Project-generated synthetic task sets: the data the embedded defaults train and evaluate on.

Four domains, each with a seeded generator, a shipped held-out split and a train split regenerated on the
fly from a fixed seed (bit-identical every time, so the repository only carries the held-out files):

=========  ========================  =====================================================================
domain     verifier                  problems
=========  ========================  =====================================================================
code       "code" (sandbox)          write ``f(x)`` from 5 input/output pairs; 6 hidden call-based tests
math       "math" (math-verify)      arithmetic, fractions, linear equations, number theory; ``\\boxed{}``
stem       "stem"                    physics / chemistry formulas: multiple choice (A-D) and numbers+units
instruct   "instruct" (rules)        short writing prompts with IFEval-style rules
=========  ========================  =====================================================================

    rows = load_tasks("code", "heldout")      # shipped: vt_core/assets/tasks/code_heldout.jsonl
    rows = load_tasks("math", "train")        # generated from TRAIN seed, problems of heldout excluded
    messages = chat_messages(rows[0])         # [{"role": "user", ...}, {"role": "assistant", ...}]

Every row has ``id`` (unique per row), ``problem_id`` (the problem's identity: train and held-out never
share one), ``domain``, ``verifier``, ``subdomain``, ``split``, ``prompt`` (the user turn's text; render
it with the chat template for generation) and ``solution`` (the reference assistant reply, SFT data);
plus the verifier's fields: ``tests`` (code), ``answer`` (math, stem; ``choices`` for multiple choice),
``rules`` (instruct). ``python -m vt_core.tasks.make_tasks`` rewrites the shipped files.
"""

from __future__ import annotations

import importlib
import json
import random
from collections.abc import Callable, Iterable
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent.parent / "assets" / "tasks"
DOMAINS = ("code", "math", "stem", "instruct")
SPLITS = ("train", "heldout")

_MODULES = {
    "code": "vt_core.tasks.code_problems",
    "math": "vt_core.tasks.math_problems",
    "stem": "vt_core.tasks.stem_problems",
    "instruct": "vt_core.tasks.instruct_problems",
}
_LAZY = {
    "generate_code_tasks": "code", "load_code_tasks": "code", "check_solution": "code",
    "generate_math_tasks": "math", "load_math_tasks": "math",
    "generate_stem_tasks": "stem", "load_stem_tasks": "stem",
    "generate_instruct_tasks": "instruct", "load_instruct_tasks": "instruct",
}

__all__ = [
    "DOMAINS", "SPLITS", "TASKS_DIR", "load_tasks", "generate_tasks", "chat_messages", "heldout_path",
    "read_task_file", "write_task_file", "draw_problems", "check_split", *_LAZY,
]


def __getattr__(name: str):
    domain = _LAZY.get(name)
    if domain is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULES[domain]), name)
    globals()[name] = value
    return value


def _module(domain: str):
    if domain not in _MODULES:
        raise ValueError(f"unknown task domain {domain!r}; known: {', '.join(DOMAINS)}")
    return importlib.import_module(_MODULES[domain])


def check_split(split: str) -> str:
    """Return ``split`` if it is one of SPLITS, else raise ValueError naming the choices."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def heldout_path(domain: str) -> Path:
    """Where the shipped held-out split of ``domain`` lives."""
    _module(domain)
    return TASKS_DIR / f"{domain}_heldout.jsonl"


def load_tasks(domain: str, split: str) -> list[dict]:
    """Rows of one domain and split (held-out read from the shipped file, train regenerated from its seed)."""
    return getattr(_module(domain), f"load_{domain}_tasks")(split)


def generate_tasks(domain: str, n: int, seed: int, exclude: Iterable[dict] = (), split: str = "train") -> list[dict]:
    """``n`` fresh rows of ``domain`` from ``seed``, none sharing a problem with the rows in ``exclude``."""
    return getattr(_module(domain), f"generate_{domain}_tasks")(n, seed, exclude=exclude, split=split)


def chat_messages(row: dict) -> list[dict]:
    """The row as a chat: the prompt as the user turn and the reference solution as the assistant turn."""
    return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["solution"]}]


def read_task_file(path: str | Path) -> list[dict]:
    """Rows of a task JSONL file (one JSON object per line)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_task_file(path: str | Path, rows: Iterable[dict]) -> int:
    """Write rows as JSONL (keys in insertion order, ASCII, one row per line); returns the byte count."""
    text = "".join(json.dumps(row, ensure_ascii=True) + "\n" for row in rows)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text, encoding="utf-8")
    return len(text.encode())


def draw_problems(make: Callable[[random.Random], dict], key: Callable[[dict], str], n: int, seed: int, *,
                  exclude: Iterable[str] = (), unique: bool = True, max_tries: int = 100) -> list[dict]:
    """Draw ``n`` problems with ``make(rng)`` from ``random.Random(seed)``.

    A problem whose ``key`` is in ``exclude`` is redrawn; with ``unique`` so is a repeat of an earlier
    key. Raises ValueError when the space looks exhausted (``max_tries`` redraws in a row).
    """
    rng = random.Random(seed)
    banned = set(exclude)
    out: list[dict] = []
    misses = 0
    while len(out) < n:
        problem = make(rng)
        k = key(problem)
        if k in banned:
            misses += 1
            if misses > max_tries:
                raise ValueError(f"could not draw {n} distinct problems (got {len(out)}): problem space exhausted")
            continue
        misses = 0
        if unique:
            banned.add(k)
        out.append(problem)
    return out
