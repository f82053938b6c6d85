"""The result every verifier returns."""

from __future__ import annotations

from dataclasses import dataclass, field


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
