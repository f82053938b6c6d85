"""The result every verifier returns, and what counts as a correct one."""

from __future__ import annotations

from dataclasses import dataclass, field

CORRECT_THRESHOLD = 0.5
"""A verifier's reward above this is a correct completion: binary verifiers give 0.0 or 1.0, and a reward
between them (partial credit) counts as correct only when above one half. It applies to the verifier's
reward, never to a shaped one (overlong penalty, Long2Short move rewards by up to their coefficient)."""


def is_correct(reward):
    """Whether ``reward`` counts as correct (above :data:`CORRECT_THRESHOLD`): pass@k, the RL pass rate,
    Long2Short's correct set and rejection sampling all use it. ``reward`` is a float (returns a bool) or
    a tensor of rewards (returns a bool tensor of the same shape)."""
    return reward > CORRECT_THRESHOLD


@dataclass
class RewardResult:
    """Outcome of scoring one completion.

    reward: the scalar used by RL (0.0 or 1.0 for binary verifiers; shaping may move it).
    passed / total: tests (or checks) passed and run; total 0 when the verifier has no notion of tests.
    reasons: human-readable reasons for failures (empty when everything passed).
    extra: verifier-specific details (extracted answer, per-test statuses, timings).
    infra_error: non-empty when the result is NOT a fact about the completion: the sandbox, the test
        harness or the verifier itself failed (launcher setup, a harness crash, a verifier that raised,
        hung or died). It says what failed; ``reward`` is then 0.0 and must not be trained or evaluated
        on as if it were the completion's (``is_infra``). A completion's own failure (wrong answer,
        exception, timeout, memory) leaves it "".
    """

    reward: float
    passed: int = 0
    total: int = 0
    reasons: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    infra_error: str = ""

    @property
    def is_infra(self) -> bool:
        """Whether this is an infrastructure failure rather than a reward."""
        return bool(self.infra_error)

    @property
    def fraction(self) -> float:
        """Fraction of tests passed (0.0 when nothing ran)."""
        return self.passed / self.total if self.total else 0.0
