"""OS-level sandbox for untrusted Python: namespaces, a non-root uid per slot, rlimits, private /tmp.

    from vt_core.sandbox import run_python, SandboxPool, isolation
    res = run_python("print(input()[::-1])", stdin="abc\n", time_limit_s=2)
    res.status, res.stdout   # ("ok", "cba\\n")

See isolation.py for what is detected and runner.py for the execution itself.
"""

from vt_core.sandbox.isolation import Isolation, SandboxUnavailable, isolation
from vt_core.sandbox.pool import SandboxPool
from vt_core.sandbox.runner import STATUSES, ExecResult, Limits, run_python, sandbox_uids

__all__ = [
    "ExecResult",
    "Isolation",
    "Limits",
    "STATUSES",
    "SandboxPool",
    "SandboxUnavailable",
    "isolation",
    "run_python",
    "sandbox_uids",
]
