"""Instruction-following prompts with IFEval-style rules, checked by the "instruct" verifier.

A prompt asks for a few sentences about a topic and adds one to three rules, at most one from each
category (two from "content"):

- format: ``bullet_count`` (exact), ``json_format``, ``title`` (``<<...>>``), ``sentence_count`` (exact);
- case: ``all_lowercase``, ``all_uppercase``;
- length: ``max_words`` / ``min_words`` (``value``);
- content: ``keywords_present`` / ``keywords_forbidden`` (``keywords``), ``starts_with`` / ``ends_with``
  (``phrase``), ``placeholder_count`` (``min``), ``no_commas``.

The rule types and parameters are those of vt_core/rewards/instruct.py. The reference reply is built to
satisfy every rule (its sentences never use a comma or a forbidden word); counts such as the word limit are
then stated to fit it. The subdomain is the category of the first rule. ``problem_id`` is the topic, the
task wording and the rules: train and held-out never share one.
"""

from __future__ import annotations

import copy
import functools
import json
import random
import re
from collections.abc import Iterable

from vt_core.tasks import check_split, draw_problems, heldout_path, read_task_file

HELDOUT_SIZE = 256
TRAIN_SIZE = 2000
HELDOUT_SEED = 7401
TRAIN_SEED = 7402

TOPICS = ["the ocean", "coffee", "trains", "gardens", "rain", "libraries", "bicycles", "mountains", "music",
          "bread", "winter", "the moon", "cats", "rivers", "markets", "old clocks", "bridges", "forests", "kites",
          "tea", "snow", "maps", "bees", "islands", "boats", "deserts", "owls", "apples", "the stars", "lamps"]
TASKS = ["Write a short note about {t}.", "Describe {t}.", "Write a few sentences about {t}.",
         "Tell me about {t}."]
SENTENCES = ["I often think about {t} on quiet days.", "{T} can make a simple day feel special.",
             "Many people enjoy {t} more than they expect.", "There is always something new to learn about {t}.",
             "A good story about {t} is worth sharing.", "Children and adults can both enjoy {t}.",
             "You can learn a lot by watching {t} closely.", "{T} can be calm in the morning and busy at night.",
             "It is easy to overlook {t} in a busy week.", "Writers have described {t} in many ways."]
KEYWORDS = ["sunlight", "patience", "silence", "history", "color", "journey", "memory", "friendship", "weather",
            "window", "courage", "laughter"]
FORBIDDEN = ["very", "really", "nice", "stuff", "amazing", "awesome", "beautiful", "important", "perfect", "great"]
START_PHRASES = ["Sure.", "Here is my answer.", "Of course."]
END_PHRASES = ["That is all.", "Thank you for reading.", "Any other questions?", "The end."]
PLACEHOLDERS = ["name", "address", "date", "city"]
CATEGORIES = {
    "format": ["bullet_count", "json_format", "title", "sentence_count"],
    "case": ["all_lowercase", "all_uppercase"],
    "length": ["max_words", "min_words"],
    "content": ["keywords_present", "keywords_forbidden", "starts_with", "ends_with", "placeholder_count",
                "no_commas"],
}
# Rule pairs one reply cannot (or should not be asked to) satisfy together.
CONFLICTS = {frozenset(p) for p in [("json_format", "starts_with"), ("json_format", "ends_with"),
                                    ("json_format", "no_commas"), ("keywords_present", "keywords_forbidden")]}
_WORD_RE = re.compile(r"\S*[A-Za-z0-9]\S*")
_SENTENCE_END_RE = re.compile(r"[.!?]+(?=\s|$)")


def count_words(text: str) -> int:
    """Whitespace-separated tokens holding a letter or a digit."""
    return len(_WORD_RE.findall(text))


def count_sentences(text: str) -> int:
    """Pieces of text holding a word, split after ``.``, ``!`` or ``?`` followed by a space or the end."""
    return sum(1 for part in _SENTENCE_END_RE.split(text.strip()) if _WORD_RE.search(part))


def _choose_rules(rng: random.Random) -> list[str]:
    """One to three rule types: the first from a uniform category, the others compatible with it."""
    first_cat = rng.choice(sorted(CATEGORIES))
    types = [rng.choice(CATEGORIES[first_cat])]
    for _ in range(rng.randint(0, 2)):
        used = {c for c, ts in CATEGORIES.items() for t in types if t in ts}
        open_cats = [c for c in sorted(CATEGORIES) if c not in used or c == "content"]
        options = [t for c in open_cats for t in CATEGORIES[c]
                   if t not in types and not any(frozenset((t, u)) in CONFLICTS for u in types)
                   and not (c == "content" and sum(u in CATEGORIES["content"] for u in types) >= 2)]
        if options:
            types.append(rng.choice(options))
    return types


def _draw(rng: random.Random) -> dict:
    """A prompt, its rules and a reference reply that satisfies them."""
    topic, task = rng.choice(TOPICS), rng.choice(TASKS)
    types = _choose_rules(rng)
    case = next((t for t in types if t in CATEGORIES["case"]), None)
    recase = {"all_lowercase": str.lower, "all_uppercase": str.upper}.get(case, lambda s: s)
    sentences = [s.format(t=topic, T=topic[0].upper() + topic[1:])
                 for s in rng.sample(SENTENCES, rng.randint(2, 4))]
    params: dict[str, dict] = {}
    if "keywords_present" in types:
        words = rng.sample(KEYWORDS, 2)
        sentences.append(f"It also brings to mind {words[0]} and {words[1]}.")
        params["keywords_present"] = {"keywords": words}
    if "keywords_forbidden" in types:
        params["keywords_forbidden"] = {"keywords": rng.sample(FORBIDDEN, 2)}
    if "placeholder_count" in types:
        k = rng.randint(1, 3)
        slots = [f"[{p}]" for p in rng.sample(PLACEHOLDERS, k)]
        sentences.append("Send it to " + " and ".join(slots) + ".")
        params["placeholder_count"] = {"min": k}
    if "bullet_count" in types:
        text = "\n".join(f"- {s}" for s in sentences)
        params["bullet_count"] = {"exact": len(sentences)}
    elif "json_format" in types:
        text = json.dumps({"topic": topic, "text": " ".join(sentences)})
    elif "title" in types:
        text = f"<<About {topic}>>\n" + " ".join(sentences)
    else:
        text = " ".join(sentences)
    sep = "\n" if "bullet_count" in types else " "
    if "starts_with" in types:
        phrase = recase(rng.choice(START_PHRASES))
        text = phrase + sep + text
        params["starts_with"] = {"phrase": phrase}
    if "ends_with" in types:
        phrase = recase(rng.choice(END_PHRASES))
        text = text + sep + phrase
        params["ends_with"] = {"phrase": phrase}
    text = recase(text)
    if "sentence_count" in types:
        params["sentence_count"] = {"exact": count_sentences(text)}
    words = count_words(text)
    if "max_words" in types:
        params["max_words"] = {"value": 5 * ((words + rng.randint(0, 8)) // 5 + 1)}
    if "min_words" in types:
        params["min_words"] = {"value": max(5, 5 * ((words - rng.randint(0, 8)) // 5))}
    rules = [{"type": t, **params.get(t, {})} for t in types]
    prompt = " ".join([task.format(t=topic), *(_describe(r) for r in rules)])
    category = next(c for c, ts in CATEGORIES.items() if types[0] in ts)
    problem_id = f"{topic}|{task}|" + json.dumps(rules, sort_keys=True)
    return {"subdomain": category, "problem_id": problem_id, "prompt": prompt, "rules": rules, "solution": text}


def _describe(rule: dict) -> str:
    """The rule as an instruction in the prompt."""
    t = rule["type"]
    if t in ("bullet_count", "sentence_count"):
        what = "bullet points starting with -" if t == "bullet_count" else "sentences"
        return f"{'Answer with' if t == 'bullet_count' else 'Write'} exactly {rule['exact']} {what}."
    if t in ("max_words", "min_words"):
        return f"Use at {'most' if t == 'max_words' else 'least'} {rule['value']} words."
    if t in ("keywords_present", "keywords_forbidden"):
        present = t == "keywords_present"
        words = f" {'and' if present else 'or'} ".join(f'"{w}"' for w in rule["keywords"])
        return f"{'Include' if present else 'Do not use'} the words {words}."
    if t in ("starts_with", "ends_with"):
        return f'{"Start" if t == "starts_with" else "End"} your reply with "{rule["phrase"]}"'
    if t == "placeholder_count":
        plural = "placeholder" if rule["min"] == 1 else "placeholders"
        return f"Include at least {rule['min']} {plural} in square brackets like [name]."
    return {"json_format": "Reply with a JSON object.", "no_commas": "Do not use any commas.",
            "title": "Give it a title in double angle brackets like <<title>>.",
            "all_lowercase": "Use only lowercase letters.", "all_uppercase": "Use only capital letters."}[t]


def _row(problem: dict, split: str, index: int) -> dict:
    return {"id": f"instruct-{split}-{index:05d}", "problem_id": problem["problem_id"], "domain": "instruct",
            "verifier": "instruct", "subdomain": problem["subdomain"], "split": split, "prompt": problem["prompt"],
            "solution": problem["solution"], "rules": problem["rules"]}


def generate_instruct_tasks(n: int, seed: int, exclude: Iterable[dict] = (), split: str = "train") -> list[dict]:
    """``n`` distinct prompts drawn from ``seed``, none with a ``problem_id`` of a row in ``exclude``."""
    check_split(split)
    banned = {r["problem_id"] for r in exclude}
    problems = draw_problems(_draw, lambda p: p["problem_id"], n, seed, exclude=banned)
    return [_row(p, split, i) for i, p in enumerate(problems)]


def make_heldout() -> list[dict]:
    """The held-out split as shipped (what make_tasks writes)."""
    return generate_instruct_tasks(HELDOUT_SIZE, HELDOUT_SEED, split="heldout")


@functools.lru_cache(maxsize=2)
def _load(split: str) -> tuple[dict, ...]:
    if split == "heldout":
        return tuple(read_task_file(heldout_path("instruct")))
    return tuple(generate_instruct_tasks(TRAIN_SIZE, TRAIN_SEED, exclude=_load("heldout"), split="train"))


def load_instruct_tasks(split: str) -> list[dict]:
    """The embedded instruction tasks: "heldout" (256 shipped rows) or "train" (TRAIN_SIZE rows, TRAIN_SEED)."""
    return copy.deepcopy(list(_load(check_split(split))))
