"""The embedded synthetic task sets (vt_core.tasks): determinism, splits by problem, reference solutions,
prompt contents, token lengths and row fields."""

import json
import re

import pytest

from vt_core import tasks
from vt_core.data import tiny_tokenizer_path
from vt_core.tasks import code_problems, instruct_problems, make_tasks, math_problems, stem_problems

MODULES = {"code": code_problems, "math": math_problems, "stem": stem_problems, "instruct": instruct_problems}
COMMON_FIELDS = {"id": str, "problem_id": str, "domain": str, "verifier": str, "subdomain": str, "split": str,
                 "prompt": str, "solution": str}
DOMAIN_FIELDS = {"code": {"tests": dict, "template": str, "constants": list, "examples": list},
                 "math": {"answer": str}, "stem": {"answer": str}, "instruct": {"rules": list}}
# Upper bounds in tiny-tokenizer tokens (prompt text, solution text); the measured maxima sit a little below.
TOKEN_BOUNDS = {"code": (80, 12), "math": (40, 128), "stem": (128, 80), "instruct": (128, 320)}


# The code train split has 20,000 rows; its first CODE_TRAIN_PREFIX rows stand for it here (rows are a seeded
# stream: test_generation_is_deterministic_and_seeded checks that a prefix is what a shorter draw gives).
CODE_TRAIN_PREFIX = 3000


@pytest.fixture(scope="module")
def splits():
    out = {}
    for domain in tasks.DOMAINS:
        heldout = tasks.load_tasks(domain, "heldout")
        if domain == "code":
            train = tasks.generate_tasks("code", CODE_TRAIN_PREFIX, code_problems.TRAIN_SEED, exclude=heldout)
        else:
            train = tasks.load_tasks(domain, "train")
        out[domain] = {"heldout": heldout, "train": train}
    return out


@pytest.fixture(scope="module")
def tokenizer():
    """The tiny tokenizer's tokenizer.json through the `tokenizers` library (the same ids as load_tokenizer)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tiny_tokenizer_path() / "tokenizer.json"))


@pytest.mark.parametrize("domain", tasks.DOMAINS)
def test_shipped_heldout_is_what_the_generator_makes(domain):
    assert tasks.read_task_file(tasks.heldout_path(domain)) == MODULES[domain].make_heldout()


@pytest.mark.parametrize("domain", tasks.DOMAINS)
def test_generation_is_deterministic_and_seeded(domain, splits):
    heldout = splits[domain]["heldout"]
    a = tasks.generate_tasks(domain, 120, seed=5, exclude=heldout)
    assert a == tasks.generate_tasks(domain, 120, seed=5, exclude=heldout)
    assert a[:60] == tasks.generate_tasks(domain, 60, seed=5, exclude=heldout)  # rows are a seeded stream
    assert a != tasks.generate_tasks(domain, 120, seed=6, exclude=heldout)
    module = MODULES[domain]
    assert splits[domain]["train"][:50] == tasks.generate_tasks(domain, 50, seed=module.TRAIN_SEED, exclude=heldout)
    assert len(heldout) == module.HELDOUT_SIZE
    if domain != "code":
        assert tasks.load_tasks(domain, "train") == splits[domain]["train"]
        assert len(splits[domain]["train"]) == module.TRAIN_SIZE


@pytest.mark.parametrize("domain", tasks.DOMAINS)
def test_train_and_heldout_never_share_a_problem(domain, splits):
    train, heldout = splits[domain]["train"], splits[domain]["heldout"]
    held_ids = [r["problem_id"] for r in heldout]
    assert len(set(held_ids)) == len(held_ids)
    assert not set(held_ids) & {r["problem_id"] for r in train}
    assert len({r["id"] for r in train + heldout}) == len(train) + len(heldout)
    assert {r["split"] for r in train} == {"train"} and {r["split"] for r in heldout} == {"heldout"}
    if domain == "code":  # equal functions count as one problem: (x + 3) * 2 is 2 * x + 6
        held_fns = [code_problems.function_key(r) for r in heldout]
        assert len(set(held_fns)) == len(held_fns)
        assert not set(held_fns) & {code_problems.function_key(r) for r in train}
    if domain != "code":
        assert len({r["problem_id"] for r in train}) == len(train)


@pytest.mark.parametrize("domain", tasks.DOMAINS)
def test_rows_have_the_fields_their_verifier_reads(domain, splits):
    from vt_core.rewards import known_verifiers

    for row in splits[domain]["heldout"] + splits[domain]["train"][:300]:
        for name, kind in {**COMMON_FIELDS, **DOMAIN_FIELDS[domain]}.items():
            assert isinstance(row.get(name), kind), (row["id"], name)
        assert row["domain"] == row["verifier"] == domain
        assert row["verifier"] in known_verifiers()
    subdomains = {r["subdomain"] for r in splits[domain]["heldout"]}
    expected = {"code": {t.name for t in code_problems.TEMPLATES}, "math": set(math_problems.SUBDOMAINS),
                "stem": {"physics", "chemistry"}, "instruct": set(instruct_problems.CATEGORIES)}[domain]
    assert subdomains == expected


def test_code_prompts_show_x0_and_x1_and_hide_the_tests(splits):
    for row in splits["code"]["heldout"] + splits["code"]["train"]:
        assert row["prompt"].endswith("\n" + code_problems.RESPONSE_PREFIX)
        assert row["response_prefix"] == code_problems.RESPONSE_PREFIX
        header, *lines = row["prompt"][: -len(code_problems.RESPONSE_PREFIX) - 1].split("\n")
        assert header == code_problems.PROMPT_HEADER
        shown = [tuple(map(int, re.fullmatch(r"f\((\d+)\) = (-?\d+)", ln).groups())) for ln in lines]
        assert [x for x, _ in shown] == sorted((x for x, _ in shown), reverse=True)  # f(0) last: next to the answer
        shown = shown[::-1]
        assert shown == [tuple(p) for p in row["examples"]] and len(shown) == code_problems.NUM_SHOWN
        xs = [x for x, _ in shown]
        assert xs[:2] == [0, 1] and xs == sorted(set(xs))
        hidden = [args[0] for args in row["tests"]["inputs"]]
        assert len(hidden) == code_problems.NUM_HIDDEN and not set(hidden) & set(xs)
        assert row["tests"]["fn_name"] == "f" and len(row["tests"]["outputs"]) == len(hidden)
        values = code_problems.function_values(row["template"], *row["constants"])
        assert [values[x] for x in hidden] == row["tests"]["outputs"] and all(values[x] == y for x, y in shown)


def test_code_reference_solutions_pass_their_hidden_tests(splits):
    rows = splits["code"]["heldout"] + splits["code"]["train"]
    assert all(code_problems.check_solution(r, r["solution"]) for r in rows)
    row = rows[0]
    a, b = row["constants"]
    assert not code_problems.check_solution(row, row["solution"].replace(f"{a}", f"{a + 1}", 1))
    assert not code_problems.check_solution(row, "def g(x):\n    return x")


def test_simulated_teacher_slips_at_its_rate_and_every_slip_fails(splits):
    rows = splits["code"]["train"]
    taught = code_problems.teacher_rows(rows, 0.75, code_problems.TEACHER_SEED)
    assert taught == code_problems.teacher_rows(rows, 0.75, code_problems.TEACHER_SEED)  # seeded
    slips = [r for r in taught if "teacher_slip" in r]
    # 3,000 rows: the slip fraction is 0.25 +- 0.008 (1 sd); both kinds about equally often.
    assert abs(len(slips) / len(rows) - 0.25) < 0.03
    kinds = [r["teacher_slip"] for r in slips]
    assert abs(kinds.count("template") / len(kinds) - 0.5) < 0.06
    assert {r["template"] for r in slips if r["teacher_slip"] == "template"} == set(code_problems.TEMPLATE_BY_NAME)
    for row, orig in zip(taught, rows):
        assert {k: v for k, v in row.items() if k not in ("solution", "teacher_slip")} == \
            {k: v for k, v in orig.items() if k != "solution"}
        assert (row["solution"] == orig["solution"]) == ("teacher_slip" not in row)
        assert code_problems.check_solution(row, row["solution"]) == ("teacher_slip" not in row), row
        if "teacher_slip" in row:
            # A plausible slip: right at the two points a careless reader checks when it is the template,
            # off at every point when it is a constant.
            fn = eval("lambda x: " + row["solution"].split("\n")[0])  # noqa: S307 (our own expressions)
            agree = [fn(x) == y for x, y in row["examples"] if x in (0, 1)]
            assert all(agree) if row["teacher_slip"] == "template" else not any(agree[1:])
    assert code_problems.teacher_rows(rows, 1.0, 1) == rows
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="teacher accuracy"):
            code_problems.teacher_rows(rows, bad, 1)


def _brute_force_fits(shown: list[tuple[int, int]], hidden: list[int], outputs: list[int]) -> bool:
    """Independent of the numpy tables: every (template, a, b) matching the shown pairs passes the tests."""
    for t in code_problems.TEMPLATES:
        fn = eval("lambda x, a, b: " + t.expr.format(a="a", b="b"))  # noqa: S307 (our own templates)
        for a in range(t.a_range[0], t.a_range[1] + 1):
            for b in range(t.b_range[0], t.b_range[1] + 1):
                if all(fn(x, a, b) == y for x, y in shown) and any(fn(x, a, b) != y for x, y in zip(hidden, outputs)):
                    return False
    return True


def test_code_problems_are_well_posed(splits):
    rows = splits["code"]["heldout"][:: len(splits["code"]["heldout"]) // 6]
    for row in rows:
        hidden = [args[0] for args in row["tests"]["inputs"]]
        assert _brute_force_fits([tuple(p) for p in row["examples"]], hidden, row["tests"]["outputs"]), row["id"]
    # x + 12 and x * x + 12 agree at x = 0 and 1: showing only those leaves the template open.
    values = code_problems.function_values("add", 12, 0)
    assert not code_problems.is_well_posed(values, [0, 1], [20])
    assert code_problems.is_well_posed(values, [0, 1, 2], [20])


def test_code_reward_runs_the_shipped_tests_in_the_sandbox(splits):
    from vt_core.rewards import score

    row = splits["code"]["heldout"][3]
    assert score(row, row["solution"]).reward == 1.0
    wrong = score(row, " x\n```")
    assert wrong.reward == 0.0 and wrong.total == code_problems.NUM_HIDDEN


def test_math_answers_are_boxed_and_verified(splits):
    from vt_core.rewards.math_verifier import extract_boxed, math_reward

    rows = splits["math"]["heldout"] + splits["math"]["train"]
    assert all(extract_boxed(r["solution"]) == r["answer"] for r in rows)
    by_kind = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(r)
    sample = [r for group in by_kind.values() for r in group[:2]]
    for r in sample:
        assert math_reward(r["solution"], r["answer"], timeout_s=None).reward == 1.0, r["id"]
    r = by_kind["frac_add"][0]
    assert math_reward("\\boxed{" + r["answer"] + "+1}", r["answer"], timeout_s=None).reward == 0.0


def test_math_fraction_and_equation_answers_are_right(splits):
    from fractions import Fraction

    def value(latex):
        m = re.fullmatch(r"(-?)\\frac\{(\d+)\}\{(\d+)\}", latex)
        return Fraction(int(m[2]), int(m[3])) * (-1 if m[1] else 1) if m else Fraction(int(latex))

    for r in splits["math"]["heldout"] + splits["math"]["train"]:
        if r["kind"] in ("linear", "linear_both"):
            left, right = r["prompt"].removeprefix("Solve for x: ").rstrip(".").split(" = ")
            x = value(r["answer"])
            as_python = [re.sub(r"(\d)x", r"\1*x", side).replace("^", "**") for side in (left, right)]
            assert eval(as_python[0], {"x": x}) == eval(as_python[1], {"x": x}), r["id"]  # noqa: S307
        if r["kind"] == "frac_add":
            p, q, s, t = map(int, re.findall(r"\d+", r["prompt"]))
            assert value(r["answer"]) == Fraction(p, q) + Fraction(s, t)


def test_stem_answers_are_lettered_or_numeric_and_verified(splits):
    from vt_core.rewards.stem import stem_reward

    rows = splits["stem"]["heldout"] + splits["stem"]["train"]
    for r in rows:
        assert stem_reward(r["solution"], r["answer"], choices=r.get("choices")).reward == 1.0, r["id"]
        if r["format"] == "choice":
            assert r["answer"] in "ABCD" and len(set(r["choices"])) == 4
            assert r["solution"].endswith(f"\\boxed{{{r['answer']}}}")
            for letter, option in zip("ABCD", r["choices"]):
                assert f"{letter}) {option}" in r["prompt"]
                assert (stem_reward(f"\\boxed{{{letter}}}", r["answer"], choices=r["choices"]).reward == 1.0) == (
                    letter == r["answer"])
        else:
            assert f"\\boxed{{{r['answer']} {r['unit']}}}" in r["solution"] and r["unit"] in r["prompt"]
    formats = {r["format"] for r in rows}
    assert formats == {"choice", "numeric"}


def test_instruct_references_pass_every_rule(splits):
    from vt_core.rewards.instruct import RULES, instruct_reward, validate_rules

    rows = splits["instruct"]["heldout"] + splits["instruct"]["train"]
    for r in rows:
        validate_rules(r["rules"])
        result = instruct_reward(r["solution"], r["rules"])
        assert result.reward == 1.0, (r["id"], result.reasons)
    used = {rule["type"] for r in rows for rule in r["rules"]}
    assert used == {t for ts in instruct_problems.CATEGORIES.values() for t in ts} and used <= set(RULES)
    # The rules bite: a plain reply breaks most of them.
    failing = sum(instruct_reward("Sure, here it is, I guess.", r["rules"]).reward == 0.0 for r in rows[:200])
    assert failing > 150


@pytest.mark.parametrize("domain", tasks.DOMAINS)
def test_token_lengths_are_bounded(domain, splits, tokenizer):
    rows = splits[domain]["heldout"] + splits[domain]["train"]
    prompt_bound, solution_bound = TOKEN_BOUNDS[domain]
    prompts = [e.ids for e in tokenizer.encode_batch([r["prompt"] for r in rows], add_special_tokens=False)]
    solutions = [e.ids for e in tokenizer.encode_batch([r["solution"] for r in rows], add_special_tokens=False)]
    assert max(map(len, prompts)) <= prompt_bound and max(map(len, solutions)) <= solution_bound
    if domain == "code":  # the RL default: short prompts and completions
        assert sum(map(len, prompts)) / len(rows) < 72 and sum(map(len, solutions)) / len(rows) < 10


def test_chat_messages_and_loader_errors(splits):
    row = splits["math"]["heldout"][0]
    assert tasks.chat_messages(row) == [{"role": "user", "content": row["prompt"]},
                                        {"role": "assistant", "content": row["solution"]}]
    with pytest.raises(ValueError, match="split must be one of"):
        tasks.load_tasks("code", "test")
    with pytest.raises(ValueError, match="unknown task domain"):
        tasks.load_tasks("poetry", "train")
    with pytest.raises(ValueError, match="out of range"):
        code_problems.function_values("affine", 1, 5)
    with pytest.raises(ValueError, match="exhausted"):
        tasks.draw_problems(lambda rng: {"k": rng.randint(0, 2)}, lambda p: str(p["k"]), 4, seed=0)
    first = tasks.load_tasks("math", "heldout")
    first[0]["answer"] = "changed"
    assert tasks.load_tasks("math", "heldout")[0]["answer"] == row["answer"]  # callers get copies


def test_make_tasks_cli_check_and_out(tmp_path, capsys):
    assert make_tasks.main(["--check", "--domains", "math", "stem"]) == 0
    assert make_tasks.main(["--out", str(tmp_path), "--train", "--domains", "math"]) == 0
    assert (tmp_path / "math_heldout.jsonl").read_bytes() == tasks.heldout_path("math").read_bytes()
    train = [json.loads(line) for line in (tmp_path / "math_train.jsonl").read_text().splitlines()]
    assert train == tasks.load_tasks("math", "train")
    assert "matches the generator" in capsys.readouterr().out

