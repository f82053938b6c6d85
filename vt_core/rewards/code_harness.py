"""The test runner that executes inside the sandbox (stdlib only; its source is shipped as main.py).

It gets the candidate program (solution.py) and the test INPUTS (tests.json: {"kind", "inputs",
"fn_name", "per_test_s"}); expected outputs never enter the sandbox. For each input it forks a child that
runs the program with fresh state: stdin tests get the input on fd 0 and have fd 1 captured; call tests
call ``fn_name`` (a top-level function or a method of ``class Solution``) with the arguments and
serialize the return value with json (so an object whose ``__eq__`` is always true cannot pass: only its
JSON value reaches the parent). The child loses the result pipe before any candidate code runs. One JSON
line per test goes to fd 3: {"i", "status": "ok"|"error"|"timeout", "out", "time_s", "error"}; the parent
compares and may stop the run at the first failure.
"""

import json
import os
import select
import signal
import sys
import time
import traceback

MAX_READ = 64 << 20


def _child(code, spec, test):
    os.setpgid(0, 0)
    os.close(3)
    if spec["kind"] == "stdin":
        fd_in = os.open("stdin.txt", os.O_RDONLY)
        os.dup2(fd_in, 0)
        os.close(fd_in)
    fd_out = os.open("stdout.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd_out, 1)
    os.close(fd_out)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(code, namespace)
        if spec["kind"] == "call":
            fn = _resolve(namespace, spec["fn_name"])
            value = json.dumps(fn(*test))
            sys.stdout.flush()
            fd_ret = os.open("return.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd_ret, value.encode())
            os.close(fd_ret)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            sys.stderr.write(f"SystemExit({exc.code!r})\n")
            _flush_exit(1)
    except BaseException:
        traceback.print_exc(limit=5)
        _flush_exit(1)
    _flush_exit(0)


def _flush_exit(code):
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:  # the candidate may have replaced or closed them; the exit code is what counts
        code = code or 1
    os._exit(code)


def _resolve(namespace, fn_name):
    solution = namespace.get("Solution")
    if isinstance(solution, type) and hasattr(solution, fn_name):
        return getattr(solution(), fn_name)
    if fn_name in namespace and callable(namespace[fn_name]):
        return namespace[fn_name]
    raise NameError(f"no function or Solution method named {fn_name!r}")


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read(MAX_READ).decode("utf-8", "replace")
    except FileNotFoundError:
        return None


def _run_one(code, spec, test):
    for stale in ("stdout.txt", "return.json"):
        if os.path.exists(stale):
            os.unlink(stale)
    if spec["kind"] == "stdin":
        with open("stdin.txt", "w") as f:
            f.write(test)
    sys.stdout.flush()
    sys.stderr.flush()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(code, spec, test)
    pidfd = os.pidfd_open(pid)
    ready, _, _ = select.select([pidfd], [], [], spec["per_test_s"])
    timed_out = not ready
    if timed_out:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    os.close(pidfd)
    elapsed = time.monotonic() - start
    if timed_out:
        return {"status": "timeout", "time_s": elapsed}
    if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
        how = f"exit code {os.WEXITSTATUS(status)}" if os.WIFEXITED(status) else f"signal {os.WTERMSIG(status)}"
        return {"status": "error", "time_s": elapsed, "error": how}
    out = _read("return.json" if spec["kind"] == "call" else "stdout.txt")
    if out is None:
        return {"status": "error", "time_s": elapsed, "error": "no return value"}
    return {"status": "ok", "time_s": elapsed, "out": out}


def main():
    with open("tests.json") as f:
        spec = json.load(f)
    with open("solution.py") as f:
        source = f.read()
    results = os.fdopen(3, "wb", buffering=0)
    try:
        code = compile(source, "solution.py", "exec")
    except (SyntaxError, ValueError) as exc:
        results.write(json.dumps({"i": 0, "status": "error", "error": f"compile: {exc}"}).encode() + b"\n")
        return
    for i, test in enumerate(spec["inputs"]):
        record = _run_one(code, spec, test)
        record["i"] = i
        results.write(json.dumps(record).encode() + b"\n")


if __name__ == "__main__":
    main()
