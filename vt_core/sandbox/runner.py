"""Run one untrusted Python program in the sandbox: ``run_python``.

The parent (this module) starts the launcher with an empty environment, hands it the program's files as
memfds, feeds stdin and reads stdout, stderr and an optional result pipe (the program's fd 3)
concurrently with byte caps, and enforces the wall-clock limit by SIGKILLing the launcher: the namespace
init dies with it, and with the init every process the program started.
"""

from __future__ import annotations

import functools
import math
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

from vt_core.sandbox.isolation import (
    SETUP_FAILED,
    log,
    SandboxUnavailable,
    isolation,
    python_executable,
    python_roots,
)

MB = 1 << 20
MAX_SLOTS = 256
_STOP_GRACE_S = 10.0
STATUSES = ("ok", "error", "timeout", "memory", "output_limit")
# Host directories the sandbox sees (read-only) besides the Python prefixes and the ':'-separated paths in
# $VT_SANDBOX_ALLOW; everything else of the host filesystem is absent (the root is a fresh tmpfs).
VISIBLE_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")

@dataclass
class Limits:
    """Resource limits of one execution.

    time_limit_s: wall-clock limit enforced by the parent (CPU time is limited to it too, rounded up).
    memory_mb: address-space limit per process (RLIMIT_AS).
    max_output_bytes: cap on stdout and on stderr (each); exceeding it kills the run ("output_limit").
    max_result_bytes: cap on what the program writes to its result pipe (fd 3).
    max_file_mb: largest file the program may write (RLIMIT_FSIZE).
    tmp_mb / tmp_files: size and inode count of the private /tmp (the working dir is /tmp/work).
    max_processes: processes and threads of the slot's uid (RLIMIT_NPROC).
    max_open_files: RLIMIT_NOFILE.
    """

    time_limit_s: float = 10.0
    memory_mb: int = 1024
    max_output_bytes: int = 4 * MB
    max_result_bytes: int = 64 * MB
    max_file_mb: int = 16
    tmp_mb: int = 64
    tmp_files: int = 4096
    max_processes: int = 16
    max_open_files: int = 64


@dataclass
class ExecResult:
    """Outcome of one sandboxed execution.

    status: "ok" (exit 0), "error" (non-zero exit or killed by a signal), "timeout" (wall clock or CPU
    limit), "memory" (MemoryError / allocation refused), "output_limit" (stdout, stderr or the result
    pipe exceeded its cap). returncode: the program's exit code, or -signal; None when the parent killed
    it. stdout / stderr: decoded as UTF-8 with replacement (truncated at the cap). result: bytes written
    to fd 3 when a result pipe was requested. wall_s: wall-clock seconds.
    """

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    result: bytes = b""
    isolated: bool = True
    details: dict = field(default_factory=dict)


class _Slots:
    """Worker slots: each concurrent execution runs as its own uid (base + slot)."""

    def __init__(self, n: int):
        self._free = list(range(n - 1, -1, -1))
        self._cond = threading.Condition()
        env = os.environ.get("VT_SANDBOX_UID_BASE")
        self.uid_base = int(env) if env else 200_000 + (os.getpid() % 4096) * MAX_SLOTS

    def acquire(self) -> int:
        with self._cond:
            while not self._free:
                self._cond.wait()
            return self._free.pop()

    def release(self, slot: int) -> None:
        with self._cond:
            self._free.append(slot)
            self._cond.notify()


SLOTS = _Slots(MAX_SLOTS)


def sandbox_uids() -> range:
    """The uids this process's sandboxes run as (for checks that nothing outlives a run)."""
    return range(SLOTS.uid_base, SLOTS.uid_base + MAX_SLOTS)


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, 0)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


@functools.lru_cache(maxsize=None)
def _mount_args() -> tuple[str, ...]:
    """--allow for VISIBLE_PATHS, the Python prefixes and $VT_SANDBOX_ALLOW (nested paths once)."""
    wanted = [*VISIBLE_PATHS, *python_roots(), *os.environ.get("VT_SANDBOX_ALLOW", "").split(":")]
    allowed: list[str] = []
    for path in wanted:
        if not path:
            continue
        if not os.path.isabs(path) or os.path.normpath(path) == "/":
            raise ValueError(f"sandbox paths must be absolute and not '/', got {path!r}")
        path = os.path.normpath(path)
        if not any(path == a or path.startswith(a + "/") for a in allowed):
            allowed.append(path)
    args: list[str] = []
    for path in allowed:
        args += ["--allow", path]
    return tuple(args)


def _launcher_argv(launcher: str, uid: int, limits: Limits, file_fds: dict[str, int], result_fd: int | None,
                   argv: list[str]) -> list[str]:
    cpu = max(1, math.ceil(limits.time_limit_s))
    cmd = [
        launcher, "--uid", str(uid), "--gid", str(uid),
        "--as", str(limits.memory_mb * MB), "--cpu", str(cpu), "--fsize", str(limits.max_file_mb * MB),
        "--nofile", str(limits.max_open_files), "--nproc", str(limits.max_processes),
        "--tmp-bytes", str(limits.tmp_mb * MB), "--tmp-inodes", str(limits.tmp_files),
        "--wall", str(cpu + 2),
    ]
    cmd += _mount_args()
    for name, fd in file_fds.items():
        cmd += ["--file", f"{name}:{fd}"]
    if result_fd is not None:
        cmd += ["--result-fd", str(result_fd)]
    return cmd + ["--"] + argv


class _Reader:
    """Concurrent, capped reads of the child's pipes and writes of its stdin, with a deadline."""

    def __init__(self, proc: subprocess.Popen, stdin: bytes, result_fd: int | None, limits: Limits,
                 on_result_line: Callable[[bytes], bool] | None):
        self.proc, self.limits, self.on_result_line = proc, limits, on_result_line
        self.sel = selectors.DefaultSelector()
        self.buffers = {"stdout": bytearray(), "stderr": bytearray(), "result": bytearray()}
        self.caps = {"stdout": limits.max_output_bytes, "stderr": limits.max_output_bytes,
                     "result": limits.max_result_bytes}
        self.stop_reason: str | None = None
        self.result_pos = 0
        for name, f in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            os.set_blocking(f.fileno(), False)
            self.sel.register(f.fileno(), selectors.EVENT_READ, name)
        if result_fd is not None:
            os.set_blocking(result_fd, False)
            self.sel.register(result_fd, selectors.EVENT_READ, "result")
        self.stdin = memoryview(stdin)
        if stdin:
            os.set_blocking(proc.stdin.fileno(), False)
            self.sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE, "stdin")
        else:
            proc.stdin.close()

    def _feed(self, fd: int) -> None:
        try:
            self.stdin = self.stdin[os.write(fd, self.stdin[: 1 << 16]):]
        except BlockingIOError:
            return
        except BrokenPipeError:  # the program stopped reading: drop the rest of its input
            self.stdin = self.stdin[:0]
        if not self.stdin:
            self.sel.unregister(fd)
            self.proc.stdin.close()

    def _drain(self, fd: int, name: str) -> None:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        if not chunk:
            self.sel.unregister(fd)
            return
        buf = self.buffers[name]
        room = self.caps[name] - len(buf)
        buf += chunk[:max(room, 0)]
        if len(chunk) > room:
            self.stop_reason = "output_limit"
            return
        if name == "result" and self.on_result_line is not None:
            while (end := buf.find(b"\n", self.result_pos)) >= 0:
                line, self.result_pos = bytes(buf[self.result_pos:end]), end + 1
                if not self.on_result_line(line):
                    self.stop_reason = "stopped"
                    return

    def run(self, deadline: float) -> None:
        try:
            while self.sel.get_map() and self.stop_reason is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.stop_reason = "timeout"
                    break
                for key, _ in self.sel.select(timeout=min(remaining, 1.0)):
                    if key.data == "stdin":
                        self._feed(key.fd)
                    else:
                        self._drain(key.fd, key.data)
                    if self.stop_reason is not None:
                        break
        finally:
            self.sel.close()


def _stop(proc: subprocess.Popen, isolated: bool) -> None:
    """Stop a run. The launcher, asked with SIGUSR1, kills the namespace init and exits once every process
    of the run is gone; SIGKILL is the fallback (the init then dies through PDEATHSIG)."""
    if isolated:
        proc.send_signal(signal.SIGUSR1)
        try:
            proc.wait(timeout=_STOP_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            pass
    os.killpg(proc.pid, signal.SIGKILL)


def _status(returncode: int | None, stop_reason: str | None, stderr: bytes) -> str:
    if stop_reason in ("timeout", "output_limit"):
        return stop_reason
    if returncode == 0:
        return "ok"
    if returncode == -signal.SIGXCPU:
        return "timeout"
    tail = stderr[-4096:]
    if b"MemoryError" in tail or b"Cannot allocate memory" in tail:
        return "memory"
    return "error"


# Without isolation: put the result pipe on fd 3 (as the launcher does), then run main.py as __main__.
_UNSAFE_BOOT = """import os, sys
if sys.argv[1] != "-1":
    os.dup2(int(sys.argv[1]), 3)
sys.argv = ["main.py"] + sys.argv[2:]
exec(compile(open("main.py").read(), "main.py", "exec"), {"__name__": "__main__"})
"""


def _execute(launcher: str | None, code: str, stdin: bytes, limits: Limits, files: Mapping[str, bytes],
             args: list[str], result_pipe: bool, on_result_line: Callable[[bytes], bool] | None) -> ExecResult:
    """One execution; ``launcher`` None runs without isolation (plain subprocess in a temp dir)."""
    all_files = {"main.py": code.encode(), **{k: bytes(v) for k, v in files.items()}}
    python = python_executable()
    slot = SLOTS.acquire()
    child_fds: list[int] = []  # the child's ends: closed here once it started
    result_r = result_w = tmpdir = None
    try:
        if result_pipe:
            result_r, result_w = os.pipe()
            child_fds.append(result_w)
        if launcher is not None:
            file_fds = {name: _memfd(name, data) for name, data in all_files.items()}
            child_fds.extend(file_fds.values())
            argv = _launcher_argv(launcher, SLOTS.uid_base + slot, limits, file_fds, result_w,
                                  [python, "-I", "-S", "-B", "main.py", *args])
            cwd = "/"
        else:
            tmpdir = tempfile.mkdtemp(prefix="vt_sandbox_unsafe_")
            for name, data in all_files.items():
                with open(os.path.join(tmpdir, name), "wb") as f:
                    f.write(data)
            argv = [python, "-I", "-S", "-B", "-c", _UNSAFE_BOOT, str(result_w if result_pipe else -1), *args]
            cwd = tmpdir
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={}, cwd=cwd, pass_fds=tuple(child_fds), close_fds=True, start_new_session=True)
        for fd in child_fds:
            os.close(fd)
        child_fds = []
        reader = _Reader(proc, stdin, result_r, limits, on_result_line)
        try:
            reader.run(start + limits.time_limit_s)
        except BaseException:  # e.g. on_result_line raised: end the run before propagating
            reader.stop_reason = "stopped"
            raise
        finally:
            if reader.stop_reason is not None:
                _stop(proc, isolated=launcher is not None)
            returncode = proc.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if not pipe.closed:
                    pipe.close()
        wall = time.monotonic() - start
        if reader.stop_reason is not None:
            returncode = None
        stderr = bytes(reader.buffers["stderr"])
        setup_failed = (launcher is not None and returncode == SETUP_FAILED
                        and stderr.startswith(b"vt-sandbox-launcher:"))
        if setup_failed:
            log.warning("sandbox setup failed: %s", stderr[:500].decode("utf-8", "replace"))
        status = _status(returncode, reader.stop_reason, stderr)
        return ExecResult(status=status, returncode=returncode, wall_s=wall,
                          stdout=reader.buffers["stdout"].decode("utf-8", "replace"),
                          stderr=stderr.decode("utf-8", "replace"), result=bytes(reader.buffers["result"]),
                          isolated=launcher is not None, details={"stopped": reader.stop_reason == "stopped",
                                                                 "setup_failed": setup_failed})
    finally:
        for fd in child_fds + ([result_r] if result_r is not None else []):
            os.close(fd)
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
        SLOTS.release(slot)


def run_python(
    code: str,
    stdin: str | bytes = "",
    *,
    time_limit_s: float = 10.0,
    memory_mb: int = 1024,
    files: Mapping[str, bytes] | None = None,
    args: list[str] | tuple[str, ...] = (),
    result_pipe: bool = False,
    on_result_line: Callable[[bytes], bool] | None = None,
    limits: Limits | None = None,
    unsafe_no_isolation: bool = False,
) -> ExecResult:
    """Run ``code`` as ``python -I -S main.py ARGS`` in the sandbox and return its ExecResult.

    stdin: bytes or str fed to the program. files: extra files placed beside main.py in the private
    working dir (/tmp/work). result_pipe: give the program a pipe on fd 3 whose bytes come back as
    ``.result``; ``on_result_line(line) -> bool`` sees each complete line as it arrives and may return
    False to stop the run early (status then reflects the exit so far; details["stopped"] is True).
    details["setup_failed"] is True when the launcher could not set the sandbox up (its message is in stderr).
    limits: a full Limits; time_limit_s / memory_mb override its fields. unsafe_no_isolation: run without
    OS isolation when none is available (never for untrusted code); otherwise SandboxUnavailable is raised.
    """
    lim = Limits(**{**(limits.__dict__ if limits else {}), "time_limit_s": time_limit_s, "memory_mb": memory_mb})
    if lim.time_limit_s <= 0 or lim.memory_mb <= 0:
        raise ValueError(f"time_limit_s and memory_mb must be positive, got {lim.time_limit_s}, {lim.memory_mb}")
    iso = isolation()
    if not iso.active and not unsafe_no_isolation:
        raise SandboxUnavailable(f"refusing to run untrusted code: {iso.reason} (pass unsafe_no_isolation=True "
                                 "to run without isolation)")
    data = stdin.encode() if isinstance(stdin, str) else bytes(stdin)
    return _execute(iso.launcher if iso.active else None, code, data, lim, files or {}, list(args),
                    result_pipe or on_result_line is not None, on_result_line)


PROBE = """import os, resource, socket
ok = os.getpid() == 2 and os.getuid() != 0 and os.geteuid() != 0
ok &= resource.getrlimit(resource.RLIMIT_NPROC)[1] == 4
ok &= resource.getrlimit(resource.RLIMIT_AS)[1] == 256 * 2**20
ok &= sorted(p for p in os.listdir('/proc') if p.isdigit()) == ['1', '2']
ok &= os.getcwd() == '/tmp/work' and not os.environ.get('PATH')
try:
    socket.create_connection(('127.0.0.1', 9), timeout=1)
    ok = False
except OSError:
    pass
print('PROBE-OK' if ok else 'PROBE-FAILED')
"""


def probe_launcher(launcher: str) -> str:
    """Run PROBE through ``launcher``; return "" when every isolation property holds, else what failed."""
    limits = Limits(time_limit_s=10.0, memory_mb=256, max_processes=4)
    try:
        res = _execute(launcher, PROBE, b"", limits, {}, [], False, None)
    except OSError as err:  # e.g. the cached binary lost its exec bit or sits on a noexec mount
        return f"cannot execute the launcher: {err}"
    if res.status == "ok" and res.stdout.strip() == "PROBE-OK":
        return ""
    return f"status={res.status} rc={res.returncode} stdout={res.stdout[-500:]!r} stderr={res.stderr[-2000:]!r}"
