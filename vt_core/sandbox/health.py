"""Host-side checks that sandboxed runs left nothing behind (used by the tests and the soak bench)."""

from __future__ import annotations

import glob
import os
import tempfile
import threading
from dataclasses import dataclass

from vt_core.sandbox.runner import sandbox_uids


@dataclass(frozen=True)
class HostSnapshot:
    """What this process holds and what the sandbox uids run on the host.

    open_fds: fds open in this process. children: (pid, state) of this process's child processes
    (zombies included). sandbox_processes: pids on the host owned by this process's sandbox uids.
    unsafe_tmpdirs: leftover working dirs of unsafe (non-isolated) runs. threads: live Python threads.
    rss_mb: resident memory of this process.
    """

    open_fds: int
    children: tuple[tuple[int, str], ...]
    sandbox_processes: tuple[int, ...]
    unsafe_tmpdirs: tuple[str, ...]
    threads: int
    rss_mb: float


def _status_fields(pid: str) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.split(":", 1) for line in f if ":" in line)
    except (FileNotFoundError, ProcessLookupError):
        return {}


def host_snapshot() -> HostSnapshot:
    """Take a HostSnapshot now."""
    me = str(os.getpid())
    uids = sandbox_uids()
    children, sandboxed = [], []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        fields = _status_fields(pid)
        if not fields:
            continue
        if fields.get("PPid", "").strip() == me:
            children.append((int(pid), fields.get("State", "?").strip()[:1]))
        if int(fields.get("Uid", "0").split()[0]) in uids:
            sandboxed.append(int(pid))
    rss_kb = float(_status_fields("self").get("VmRSS", "0 kB").split()[0])
    return HostSnapshot(
        open_fds=len(os.listdir("/proc/self/fd")),
        children=tuple(sorted(children)),
        sandbox_processes=tuple(sorted(sandboxed)),
        unsafe_tmpdirs=tuple(sorted(glob.glob(os.path.join(tempfile.gettempdir(), "vt_sandbox_unsafe_*")))),
        threads=threading.active_count(),
        rss_mb=rss_kb / 1024,
    )


def new_children(before: HostSnapshot, after: HostSnapshot) -> tuple[tuple[int, str], ...]:
    """Children of this process in ``after`` that were not there in ``before``.

    Other parts of a long-lived process (verifier worker pools, compile workers) keep children of their
    own; a sandbox leak is a child that appeared during the checked runs and is still there.
    """
    old = {pid for pid, _ in before.children}
    return tuple(c for c in after.children if c[0] not in old)
