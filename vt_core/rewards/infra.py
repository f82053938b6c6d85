"""Counting infrastructure failures in a batch of rewards, and stopping when most of a batch is one.

A RewardResult with ``infra_error`` set is not a fact about its completion (see base.RewardResult). The RL
loop and the evaluation count them per step / per set as ``infra_error_frac`` and stop with
:class:`InfrastructureFailure` when more than ``MAX_INFRA_FRAC`` of a batch hit one: training or reporting
on those zeros would look exactly like a hard task.

    failures = [infra_record(r) for r in results]        # None, or (cause, stderr tail) per sample
    frac = check_infra(failures, "RL step 3")             # raises when frac > MAX_INFRA_FRAC
"""

from __future__ import annotations

from vt_core.rewards.base import RewardResult

MAX_INFRA_FRAC = 0.5
"""A batch where more than this fraction of the samples hit an infrastructure failure stops the run."""


class InfrastructureFailure(RuntimeError):
    """Most of a batch's rewards could not be computed: the sandbox, the harness or a verifier failed."""


def infra_record(result: RewardResult) -> tuple[str, str] | None:
    """(cause, last 2000 characters of stderr) of an infrastructure failure, None for a real reward; small
    and picklable, so ranks can gather them."""
    if not result.is_infra:
        return None
    return result.infra_error, str(result.extra.get("stderr") or result.extra.get("traceback") or "")[-2000:]


def check_infra(failures: list[tuple[str, str] | None], where: str, max_frac: float = MAX_INFRA_FRAC) -> float:
    """The fraction of ``failures`` that are infrastructure failures; raises InfrastructureFailure naming
    the first cause and its stderr when it exceeds ``max_frac`` (``where`` says which batch, e.g. "RL step 3")."""
    if not failures:
        return 0.0
    hit = [f for f in failures if f is not None]
    frac = len(hit) / len(failures)
    if frac > max_frac:
        cause, stderr = hit[0]
        raise InfrastructureFailure(
            f"{where}: {len(hit)} of {len(failures)} rewards are infrastructure failures, not rewards "
            f"(more than {max_frac:.0%}); the first: {cause}\nits stderr: {stderr.strip() or '(empty)'}\n"
            "Fix the sandbox / verifier (run vt_core.rewards.selfcheck.self_check) instead of training on zeros."
        )
    return frac


__all__ = ["MAX_INFRA_FRAC", "InfrastructureFailure", "check_infra", "infra_record"]
