"""Which isolation this machine allows, and the launcher binary that applies it.

The launcher (launcher.c, beside this file) is compiled once per source version with the system C
compiler into ``$VT_SANDBOX_CACHE`` (default ``~/.cache/vt_core``) and reused. Isolation needs root
(or CAP_SYS_ADMIN + CAP_SETUID + CAP_SETGID) for the namespaces and the uid switch; :func:`isolation`
checks the requirements, runs one probe program through the launcher, and logs once which isolation is
active. When isolation is unavailable, running untrusted code raises :class:`SandboxUnavailable` unless
the caller passes ``unsafe_no_isolation=True``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("vt_core.sandbox")

LAUNCHER_SOURCE = Path(__file__).with_name("launcher.c")
SETUP_FAILED = 125
NAMESPACES = ("pid", "mount", "net", "ipc", "uts")


class SandboxUnavailable(RuntimeError):
    """OS-level isolation cannot be set up on this machine (and the unsafe fallback was not requested)."""


@dataclass(frozen=True)
class Isolation:
    """What the sandbox does on this machine.

    mode: "namespaces" (the launcher runs) or "none".
    launcher: path of the compiled launcher ("" when mode is "none").
    reason: why isolation is unavailable ("" when it is active).
    """

    mode: str
    launcher: str = ""
    reason: str = ""

    @property
    def active(self) -> bool:
        return self.mode == "namespaces"

    def describe(self) -> str:
        if not self.active:
            return f"no isolation ({self.reason})"
        return (
            f"namespaces ({', '.join(NAMESPACES)}), a non-root uid per slot, no_new_privs, rlimits, "
            "a read-only allow-listed root (system dirs and the Python prefix), private /tmp and /dev; launcher "
            + self.launcher
        )


@functools.lru_cache(maxsize=None)
def python_executable() -> str:
    """The interpreter the sandbox runs (the real file, not a shim)."""
    return os.path.realpath(sys.executable)


@functools.lru_cache(maxsize=None)
def python_roots() -> tuple[str, ...]:
    """Directories the sandboxed interpreter needs: its prefixes (made visible inside the sandbox)."""
    roots = []
    for p in (sys.base_prefix, sys.prefix, os.path.dirname(os.path.dirname(python_executable()))):
        real = os.path.realpath(p)
        if real not in roots and real != "/":
            roots.append(real)
    return tuple(roots)


def _cache_dir() -> Path:
    env = os.environ.get("VT_SANDBOX_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "vt_core"


def build_launcher() -> Path:
    """Compile launcher.c if this version is not compiled yet; return the binary's path."""
    source = LAUNCHER_SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    target = _cache_dir() / f"vt-sandbox-launcher-{digest}"
    if target.exists():
        return target
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise SandboxUnavailable("no C compiler (cc/gcc/clang) to build the sandbox launcher")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    cmd = [compiler, "-O2", "-Wall", "-o", str(tmp), str(LAUNCHER_SOURCE)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SandboxUnavailable(f"compiling the sandbox launcher failed: {' '.join(cmd)}\n{proc.stderr}")
    os.chmod(tmp, 0o700)
    os.replace(tmp, target)
    return target


_LOCK = threading.Lock()
_ISOLATION: Isolation | None = None


def _detect() -> Isolation:
    if not sys.platform.startswith("linux"):
        return Isolation("none", reason=f"needs Linux namespaces, platform is {sys.platform}")
    if os.geteuid() != 0:
        return Isolation("none", reason="needs root (namespaces, mounts and a uid switch); running as uid "
                         f"{os.geteuid()}")
    try:
        launcher = build_launcher()
    except SandboxUnavailable as err:
        return Isolation("none", reason=str(err))
    from vt_core.sandbox.runner import probe_launcher

    problem = probe_launcher(str(launcher))
    if problem:
        return Isolation("none", reason=f"the launcher probe failed: {problem}")
    return Isolation("namespaces", launcher=str(launcher))


def isolation(refresh: bool = False) -> Isolation:
    """The isolation in force (detected once per process, logged once)."""
    global _ISOLATION
    with _LOCK:
        if _ISOLATION is None or refresh:
            _ISOLATION = _detect()
            level = logging.INFO if _ISOLATION.active else logging.WARNING
            log.log(level, "vt_core sandbox isolation: %s", _ISOLATION.describe())
        return _ISOLATION
