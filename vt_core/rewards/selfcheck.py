"""Verifier self-check before a run: one known-right and one known-wrong completion per verifier.

The RL trainer (every RL recipe and the pipeline's RL stages), the eval recipe and the pipeline call
:func:`self_check` on the verifiers their problems name before their first step. It scores each built-in
verifier's two known completions through the run's own scorer, the way the run will (the group form as
well as one at a time: for "code" that is the sandbox's group mode and its single mode), and raises
:class:`VerifierSelfCheckFailed` unless right scores 1 and wrong scores 0, naming the verifier, what each
scored, the infrastructure failure and its stderr. That takes well under a second; without it a broken
sandbox (a launcher that cannot run, a harness that cannot reset) shows up only as a run whose rewards are
all 0, which looks exactly like a hard task.

    from vt_core.rewards.selfcheck import self_check, verifiers_of
    self_check(verifiers_of(problems), scorer)      # {verifier: seconds}; raises VerifierSelfCheckFailed

Verifiers registered by users have no known completions here: they are logged as not checked.
"""

from __future__ import annotations

import logging
import time
from typing import Iterable

from vt_core.rewards.base import RewardResult
from vt_core.rewards.registry import resolve_verifier_name
from vt_core.rewards.scorer import RewardScorer

log = logging.getLogger("vt_core.rewards")

_ADD = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"

KNOWN: dict[str, tuple[dict, str, str]] = {
    "code": ({"verifier": "code", "tests": {"inputs": ["2 3\n", "10 -4\n"], "outputs": ["5\n", "6\n"]},
              "code_reward": {"cache_size": 0, "per_test_time_s": 5.0, "total_time_s": 20.0}},
             _ADD, _ADD.replace("a + b", "a - b")),
    "math": ({"verifier": "math", "answer": "\\frac{1}{2}"}, "Half of 1 is \\boxed{0.5}.", "So \\boxed{2}."),
    "stem": ({"verifier": "stem", "answer": "B", "choices": ["10 g", "150 g", "40 g", "43.75 g"]},
             "m = n * M = 150 g\n\\boxed{B}", "\\boxed{C}"),
    "instruct": ({"verifier": "instruct", "rules": [{"type": "all_lowercase"}]},
                 "all of this answer is lowercase.", "This Answer Is Not Lowercase."),
}
"""verifier name -> (problem, known-right completion, known-wrong completion)."""


class VerifierSelfCheckFailed(RuntimeError):
    """A verifier did not score its known-right completion 1 and its known-wrong one 0."""


def verifiers_of(problems: Iterable[dict]) -> list[str]:
    """Sorted names of the verifiers ``problems`` use (``problem["verifier"]``, else ``problem["domain"]``)."""
    return sorted({resolve_verifier_name(p) for p in problems})


def _describe(result: RewardResult, other: RewardResult | None = None) -> str:
    text = f"{result.reward:g}"
    if other is not None and result.infra_error and result.infra_error == other.infra_error:
        text += " (the same infrastructure failure)"
    elif result.infra_error:
        stderr = str(result.extra.get("stderr") or "").strip()
        text += f" (infrastructure failure: {result.infra_error}" + (f"; stderr: {stderr[-1500:]})" if stderr else ")")
    elif result.reasons:
        text += f" ({'; '.join(result.reasons)[:500]})"
    return text


def _environment(name: str) -> str:
    if name != "code":
        return ""
    from vt_core.sandbox import isolation

    return f"\nsandbox: {isolation().describe()}"


def check_verifier(name: str, scorer: RewardScorer) -> float:
    """Self-check of one built-in verifier through ``scorer``; returns the seconds it took."""
    problem, right, wrong = KNOWN[name]
    start = time.perf_counter()
    futures = scorer.submit_group(problem, [right, wrong], verifier=name) + [
        scorer.submit(problem, right, verifier=name), scorer.submit(problem, wrong, verifier=name)]
    got = [f.result() for f in futures]
    for mode, (r_right, r_wrong) in (("group", got[:2]), ("single", got[2:])):
        if r_right.reward != 1.0 or r_wrong.reward != 0.0 or r_right.is_infra or r_wrong.is_infra:
            raise VerifierSelfCheckFailed(
                f"verifier self-check failed for {name!r} ({mode} scoring): the known-right completion scored "
                f"{_describe(r_right)} and the known-wrong one {_describe(r_wrong, r_right)}; expected 1 and 0. "
                f"A run would train on rewards that say nothing about its completions.{_environment(name)}")
    return time.perf_counter() - start


def self_check(verifiers: Iterable[str], scorer: RewardScorer | None = None) -> dict[str, float]:
    """Check every built-in verifier in ``verifiers``; returns {verifier: seconds}; raises
    VerifierSelfCheckFailed at the first that fails. ``scorer`` None uses a private one."""
    own = scorer is None
    scorer = scorer or RewardScorer(max_workers=2)
    try:
        times = {}
        for name in verifiers:
            if name in KNOWN:
                times[name] = check_verifier(name, scorer)
            else:
                log.warning("verifier %r has no known-right/known-wrong completions: not self-checked", name)
        return times
    finally:
        if own:
            scorer.shutdown()


__all__ = ["KNOWN", "VerifierSelfCheckFailed", "check_verifier", "self_check", "verifiers_of"]
