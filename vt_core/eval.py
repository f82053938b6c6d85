"""Evaluation with the in-process engine and the domain verifiers: pass@k, mean@k, per subdomain.

pass@k uses the unbiased estimator over n samples with c correct: 1 - C(n-c, k) / C(n, k).
mean@k is the average pass@1 over the k samples (what "pass@1 at k samples" reports). The standard error
of pass@1 is taken over problems (each problem's fraction of correct samples is one observation).

Benchmarks are local files read by :func:`load_benchmark` (JSONL / JSON / Parquet, see
``vt_core.data.iter_records``); each row becomes a problem ``{"id", "prompt", "verifier", "subdomain", ...}``
with the verifier's fields. Row formats (``fmt="auto"`` picks per row):

- ``"vt"``: rows already in that shape (``prompt`` plus ``verifier`` or ``domain``), e.g. vt_core.tasks files.
- ``"aime"``: AIME / MATH style ``problem`` (or ``question``) + ``answer``; verifier "math".
- ``"livecodebench"``: ``question_content``, ``starter_code``, ``public_test_cases`` /
  ``private_test_cases`` (JSON, or the release's base64 + zlib + pickled string, decoded with an unpickler
  that accepts plain strings only), ``metadata`` (``func_name``), ``difficulty``; verifier "code".
"""

from __future__ import annotations

import base64
import io
import json
import math
import pickle
import zlib
from collections import defaultdict
from pathlib import Path

from vt_core.data import iter_records
from vt_core.generation import Engine, SamplingParams
from vt_core.rewards.base import is_correct
from vt_core.rewards.infra import MAX_INFRA_FRAC, check_infra, infra_record
from vt_core.rewards.scorer import RewardScorer


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with c correct out of n samples (k <= n)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def encode_prompt(tokenizer, prompt) -> list[int]:
    """Prompt token ids, the same way SFT tokenizes prompts: chat messages through the chat template
    with the generation prompt, plain text with the tokenizer's special tokens."""
    if isinstance(prompt, list):
        return list(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False))
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def summarize(correct: list[list[bool]], subdomains: list[str] | None = None, ks: tuple[int, ...] = (1,)) -> dict:
    """Aggregate per-problem sample correctness into pass@k / mean@k / stderr, overall and per subdomain."""
    def block(rows: list[list[bool]]) -> dict:
        n = len(rows[0])
        fracs = [sum(r) / n for r in rows]
        mean = sum(fracs) / len(fracs)
        var = sum((f - mean) ** 2 for f in fracs) / max(len(fracs) - 1, 1)
        out = {"problems": len(rows), "samples": n, "pass@1": mean, "pass@1_stderr": math.sqrt(var / len(fracs))}
        for k in ks:
            if k <= n:
                out[f"pass@{k}"] = sum(pass_at_k(n, sum(r), k) for r in rows) / len(rows)
        out[f"mean@{n}"] = mean
        return out

    result = block(correct)
    if subdomains is not None:
        groups: dict[str, list[list[bool]]] = defaultdict(list)
        for sub, row in zip(subdomains, correct):
            groups[sub].append(row)
        result["by_subdomain"] = {sub: block(rows) for sub, rows in sorted(groups.items())}
    return result


def evaluate(engine: Engine, tokenizer, problems: list[dict], *, k: int = 4, params: SamplingParams | None = None,
             ks: tuple[int, ...] = (1, 4), scorer: RewardScorer | None = None, seed: int = 1234,
             max_infra_frac: float | None = MAX_INFRA_FRAC) -> dict:
    """Generate k samples per problem and score them with each problem's verifier.

    Returns summarize(...) plus "rewards" (per problem, per sample), "infra" (per problem, per sample:
    None, or (cause, stderr) of an infrastructure failure, which counts as not correct) and
    "infra_error_frac". More than ``max_infra_frac`` of the samples failing that way raises
    InfrastructureFailure (None: the caller checks, e.g. after gathering all ranks). Sampling is seeded
    per problem (seed + index), so the same model gives the same evaluation.
    """
    base = params or SamplingParams(temperature=1.0, max_new_tokens=256)
    plist = [SamplingParams(**{**base.__dict__, "seed": seed + i}) for i in range(len(problems))]
    prompts = [encode_prompt(tokenizer, p["prompt"]) for p in problems]
    outputs = engine.generate(prompts, plist, n=k)
    own = scorer is None
    scorer = scorer or RewardScorer(max_workers=4)
    try:
        texts = [[c.text if c.text is not None else tokenizer.decode(c.token_ids) for c in group] for group in outputs]
        futures = [scorer.submit_group(p, group) for p, group in zip(problems, texts)]
        results = [[f.result() for f in row] for row in futures]
    finally:
        if own:
            scorer.shutdown()
    rewards = [[r.reward for r in row] for row in results]
    infra = [[infra_record(r) for r in row] for row in results]
    frac = check_infra([f for row in infra for f in row], f"evaluation of {len(problems)} problems",
                       1.0 if max_infra_frac is None else max_infra_frac)
    correct = [[is_correct(r) for r in row] for row in rewards]
    subs = [str(p.get("subdomain", p.get("domain", "all"))) for p in problems]
    out = summarize(correct, subs, ks)
    out["rewards"] = rewards
    out["infra"] = infra
    out["infra_error_frac"] = frac
    out["ids"] = [p.get("id", i) for i, p in enumerate(problems)]
    return out


FORMATS = ("auto", "vt", "aime", "livecodebench")
_AIME_PROBLEM_KEYS = ("problem", "question", "Problem", "Question")
_AIME_ANSWER_KEYS = ("answer", "Answer", "expected_answer")


class _StringsOnly(pickle.Unpickler):
    """Unpickles plain data only: any class or function reference (the way pickles run code) is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: test cases must be plain data")


def decode_test_cases(raw):
    """LiveCodeBench test cases as a list of dicts: JSON text, an already-decoded list, or the compressed
    form of the release (base64 of zlib of a pickled JSON string). Pickles holding anything but plain data
    raise pickle.UnpicklingError; no code is ever run."""
    if raw is None or raw == "":
        return []
    if not isinstance(raw, str):
        return list(raw)
    text = raw.strip()
    if not text.startswith("["):
        payload = _StringsOnly(io.BytesIO(zlib.decompress(base64.b64decode(text)))).load()
        text = payload if isinstance(payload, str) else json.dumps(payload)
    cases = json.loads(text)
    if not isinstance(cases, list):
        raise ValueError(f"test cases must decode to a list, got {type(cases).__name__}")
    return cases


def _row_format(row: dict) -> str:
    if "question_content" in row:
        return "livecodebench"
    if "prompt" in row and ("verifier" in row or "domain" in row):
        return "vt"
    if any(k in row for k in _AIME_PROBLEM_KEYS) and any(k in row for k in _AIME_ANSWER_KEYS):
        return "aime"
    raise ValueError(f"unrecognized benchmark row (keys: {sorted(row)}): expected prompt+verifier, "
                     f"problem+answer (AIME) or question_content (LiveCodeBench)")


def _first(row: dict, keys: tuple[str, ...]):
    for k in keys:
        if k in row:
            return row[k]
    raise ValueError(f"none of the fields {', '.join(keys)}")


def _lcb_prompt(row: dict, fn_name: str | None) -> str:
    starter = (row.get("starter_code") or "").strip()
    if starter:
        how = f"Complete this starter code and return the whole program in one python block:\n```python\n{starter}\n```"
    elif fn_name:
        how = f"Define the function {fn_name} and return the program in one python block."
    else:
        how = "Read the input from stdin, write the answer to stdout, and return the program in one python block."
    return f"{row['question_content'].strip()}\n\n{how}"


def benchmark_problem(row: dict, fmt: str = "auto", index: int = 0) -> dict:
    """One benchmark row as an evaluation problem (see the module docstring for the formats)."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    fmt = _row_format(row) if fmt == "auto" else fmt
    if fmt == "vt":
        return {"id": row.get("id", index), **row}
    if fmt == "aime":
        answer = _first(row, _AIME_ANSWER_KEYS)
        sub = row.get("subdomain") or row.get("type") or row.get("subject") or "math"
        return {"id": row.get("id", row.get("ID", index)), "prompt": str(_first(row, _AIME_PROBLEM_KEYS)),
                "answer": answer if isinstance(answer, list) else str(answer), "verifier": "math",
                "subdomain": str(sub)}
    meta = row.get("metadata") or {}
    if isinstance(meta, str):
        meta = json.loads(meta) if meta.strip() else {}
    fn_name = meta.get("func_name") or row.get("fn_name")
    cases = decode_test_cases(row.get("public_test_cases")) + decode_test_cases(row.get("private_test_cases"))
    if not cases:
        raise ValueError(f"LiveCodeBench row {row.get('question_id', index)!r} has no test cases")
    problem = {"id": row.get("question_id", index), "prompt": _lcb_prompt(row, fn_name), "tests": cases,
               "verifier": "code", "subdomain": str(row.get("difficulty") or "code")}
    if fn_name:
        problem["fn_name"] = fn_name
    return problem


def load_benchmark(path: str | Path, fmt: str = "auto", limit: int | None = None) -> list[dict]:
    """Problems of a local benchmark file (JSONL / JSON / Parquet / saved dataset); ``limit`` keeps the first
    rows. Errors name the file and row."""
    problems = []
    for i, record in enumerate(iter_records(path)):
        if limit is not None and i >= limit:
            break
        try:
            problems.append(benchmark_problem(record.data, fmt, i))
        except (ValueError, KeyError, zlib.error, pickle.UnpicklingError) as e:
            raise record.error(None, f"cannot read as a {fmt} benchmark row: {e}") from None
    return problems


def chat_prompts(problems: list[dict], tokenizer) -> list[dict]:
    """Problems whose plain-text prompts become a single user turn when the tokenizer has a chat template
    (how SFT renders the same rows); message lists and template-less tokenizers are left as they are."""
    if not getattr(tokenizer, "chat_template", None):
        return problems
    return [{**p, "prompt": [{"role": "user", "content": p["prompt"]}]} if isinstance(p["prompt"], str) else p
            for p in problems]


def format_table(results: dict[str, dict], ks: tuple[int, ...] = (1, 4)) -> str:
    """A plain-text table: one row per (name, subdomain) with pass@1 +- stderr, pass@k and, per set, the
    fraction of samples that hit an infrastructure failure (``infra_error_frac``; counted as not correct)."""
    head = f"{'set':<28}{'problems':>9}{'pass@1':>10}{'+-':>7}" + "".join(f"{'pass@' + str(k):>9}" for k in ks if k > 1)
    head += f"{'infra':>8}"
    lines = [head, "-" * len(head)]
    for name, res in results.items():
        rows = [(name, res)] + [(f"  {name}/{sub}", r) for sub, r in res.get("by_subdomain", {}).items()]
        for label, r in rows:
            cells = "".join(f"{100 * r[f'pass@{k}']:>8.1f}%" if f"pass@{k}" in r else f"{'-':>9}" for k in ks if k > 1)
            cells += f"{100 * r['infra_error_frac']:>7.1f}%" if "infra_error_frac" in r else f"{'':>8}"
            head = f"{label:<28}{r['problems']:>9}{100 * r['pass@1']:>9.1f}%{100 * r['pass@1_stderr']:>6.1f}%"
            lines.append(head + cells)
    return "\n".join(lines)


__all__ = [
    "FORMATS",
    "benchmark_problem",
    "chat_prompts",
    "decode_test_cases",
    "encode_prompt",
    "evaluate",
    "format_table",
    "load_benchmark",
    "pass_at_k",
    "summarize",
]
