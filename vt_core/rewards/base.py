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
    """

    reward: float
    passed: int = 0
    total: int = 0
    reasons: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        """Fraction of tests passed (0.0 when nothing ran)."""
        return self.passed / self.total if self.total else 0.0
