"""Verifier registry: datasets name their verifier, `score` dispatches to it.

A verifier is a callable ``fn(problem: dict, completion: str) -> RewardResult``. Built-in verifiers live in
modules of this package and are imported lazily, on the first lookup of their name, so that looking up
"math" never imports the sandbox and looking up "code" imports ``vt_core.rewards.code`` (which registers
itself under "code") only when a code problem is scored.

    from vt_core.rewards.registry import register_verifier, score

    @register_verifier("yes")
    def yes_verifier(problem, completion):
        return RewardResult(reward=float("yes" in completion.lower()))

    score({"verifier": "yes"}, "Yes!")            # -> RewardResult(reward=1.0, ...)
    score({"domain": "math", "answer": "1/2"}, "... \\boxed{0.5}")
"""

from __future__ import annotations

import importlib
import threading
from typing import Callable

from vt_core.rewards.base import RewardResult

Verifier = Callable[[dict, str], RewardResult]
GroupVerifier = Callable[[dict, list], list]
"""``fn(problem, completions: list[str]) -> list[RewardResult]``: the same rewards as the verifier's, for
several completions of one problem at once (e.g. the code verifier runs them in one sandbox launch)."""

_VERIFIERS: dict[str, Verifier] = {}
_GROUP_VERIFIERS: dict[str, GroupVerifier] = {}
_LOCK = threading.RLock()

# Built-in verifier name -> module that registers it when imported.
_BUILTIN_MODULES: dict[str, str] = {
    "math": "vt_core.rewards.math_verifier",
    "stem": "vt_core.rewards.stem",
    "instruct": "vt_core.rewards.instruct",
    "code": "vt_core.rewards.code",
}


def register_verifier(name: str, fn: Verifier | None = None, *, overwrite: bool = False,
                      group: GroupVerifier | None = None):
    """Register ``fn`` under ``name``; usable directly or as ``@register_verifier(name)``.

    ``group``, optional, scores several completions of one problem at once (see GroupVerifier); it must
    give the same rewards as calling ``fn`` on each.

    Registering a different function under a taken name raises ValueError unless ``overwrite=True``
    (re-registering the same function, e.g. on module reload, is allowed). Returns ``fn``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"verifier name must be a non-empty string, got {name!r}")

    def _register(f: Verifier) -> Verifier:
        if not callable(f):
            raise TypeError(f"verifier {name!r} must be callable, got {type(f).__name__}")
        with _LOCK:
            old = _VERIFIERS.get(name)
            if old is not None and not overwrite and _identity(old) != _identity(f):
                raise ValueError(f"a verifier named {name!r} is already registered ({old!r}); pass overwrite=True")
            _VERIFIERS[name] = f
            if group is not None:
                _GROUP_VERIFIERS[name] = group
            else:
                _GROUP_VERIFIERS.pop(name, None)
        return f

    if fn is None:
        return _register
    return _register(fn)


def _identity(fn: Verifier) -> tuple:
    """What makes two verifier objects "the same": a reloaded module re-creates its top-level functions
    under the same module and qualified name; lambdas, closures and callable objects are compared by id."""
    qualname = getattr(fn, "__qualname__", None)
    if qualname is None or "<" in qualname:
        return (id(fn),)
    return (getattr(fn, "__module__", None), qualname)


def unregister_verifier(name: str) -> None:
    """Remove ``name`` from the registry (KeyError if absent). Mostly for tests."""
    with _LOCK:
        del _VERIFIERS[name]
        _GROUP_VERIFIERS.pop(name, None)


def known_verifiers() -> list[str]:
    """Sorted names of registered verifiers plus built-ins not imported yet."""
    with _LOCK:
        return sorted(set(_VERIFIERS) | set(_BUILTIN_MODULES))


def get_verifier(name: str) -> Verifier:
    """The verifier registered as ``name``, importing its built-in module on first use.

    Raises KeyError naming the known verifiers when ``name`` is neither registered nor built in.
    """
    with _LOCK:
        fn = _VERIFIERS.get(name)
        if fn is not None:
            return fn
        module = _BUILTIN_MODULES.get(name)
        if module is None:
            raise KeyError(f"unknown verifier {name!r}; known verifiers: {', '.join(known_verifiers())}")
        importlib.import_module(module)
        fn = _VERIFIERS.get(name)
        if fn is None:
            raise KeyError(f"module {module} was imported but did not register a verifier named {name!r}")
        return fn


def get_group_verifier(name: str) -> GroupVerifier | None:
    """The group form of verifier ``name`` (importing its built-in module first), or None if it has none."""
    get_verifier(name)
    with _LOCK:
        return _GROUP_VERIFIERS.get(name)


def resolve_verifier_name(problem: dict, verifier: str | None = None) -> str:
    """The verifier name for ``problem``: the argument, else problem["verifier"], else problem["domain"]."""
    if verifier is not None:
        return verifier
    for key in ("verifier", "domain"):
        name = problem.get(key)
        if name:
            return name
    raise KeyError(
        f"no verifier given and the problem has neither a 'verifier' nor a 'domain' key (keys: {sorted(problem)}); "
        f"known verifiers: {', '.join(known_verifiers())}"
    )


def score(problem: dict, completion: str, verifier: str | None = None) -> RewardResult:
    """Score one completion with the verifier chosen by ``resolve_verifier_name``."""
    return get_verifier(resolve_verifier_name(problem, verifier))(problem, completion)
