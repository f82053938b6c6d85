"""Verifiable rewards: math, STEM, instruction-following and code verifiers behind one interface.

``score(problem, completion)`` picks the verifier named by ``problem["verifier"]`` (else
``problem["domain"]``) from the registry (``register_verifier`` / ``get_verifier``); ``RewardScorer``
runs verifiers in parallel with generation; ``shaping`` holds the overlong penalty and Long2Short.
Verifier modules are imported lazily: importing this package never imports the sandbox.
"""

from __future__ import annotations

import importlib

from vt_core.rewards.base import CORRECT_THRESHOLD, RewardResult, is_correct
from vt_core.rewards.registry import get_verifier, known_verifiers, register_verifier, score

# Public names served from submodules on first access (keeps `import vt_core.rewards` light).
_LAZY = {
    "math_reward": "vt_core.rewards.math_verifier",
    "stem_reward": "vt_core.rewards.stem",
    "instruct_reward": "vt_core.rewards.instruct",
    "code_reward": "vt_core.rewards.code",
    "RewardScorer": "vt_core.rewards.scorer",
    "overlong_penalty": "vt_core.rewards.shaping",
    "apply_overlong_penalty": "vt_core.rewards.shaping",
    "long2short": "vt_core.rewards.shaping",
}

__all__ = ["CORRECT_THRESHOLD", "RewardResult", "is_correct", "get_verifier", "known_verifiers", "register_verifier",
           "score", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
