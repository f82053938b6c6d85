"""The test runner that executes inside the sandbox (stdlib only; its source is shipped as main.py).

It gets the candidate program (solution.py) and the test INPUTS (tests.json: {"kind", "inputs",
"fn_name", "per_test_s"}); expected outputs never enter the sandbox. For each input it forks a child that
runs the program with fresh state: stdin tests get the input on fd 0 and have fd 1 captured; call tests
call ``fn_name`` (a top-level function or a method of ``class Solution``) with the arguments and
serialize the return value with json (so an object whose ``__eq__`` is always true cannot pass: only its
JSON value reaches the parent). The child loses the result pipe before any candidate code runs. One JSON
line per test goes to fd 3: {"i", "status": "ok"|"error"|"timeout", "out", "time_s", "error"}; the parent
compares and may stop the run at the first failure.

Group mode (tests.json has "candidates": K, the programs are solution_0.py .. solution_{K-1}.py): the K
programs (e.g. the n samples of one prompt) run one after another in this one sandbox launch, each on
every test as above, with lines {"c": j, "i", ...}. All sources are read before any candidate runs, and
between candidates every other process of the sandbox is killed and the writable tree (/tmp, the only
writable place) is emptied of everything the candidates made (the launcher's read-only binds there stay:
see _made_by_candidates), so no candidate can see or leave anything for another: the same isolation
as K launches at a fraction of the start-up cost. The parent cannot stop one candidate early (expected
outputs never enter the sandbox), so a candidate's remaining tests are skipped here after a test that
errors or times out.

Protocol: the first line is {"ready": true} (the interpreter and the harness started); a failure of the
harness itself (never a candidate's: candidates run in forked children) is reported as one line
{"infra": "..."} before it exits, so the parent can tell an infrastructure failure from a program's.
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
    try:
        pid = os.fork()
    except BlockingIOError as exc:  # the candidate's own leftover processes use up RLIMIT_NPROC
        return {"status": "error", "time_s": 0.0, "error": f"cannot start the test: {exc}"}
    if pid == 0:
        try:
            _child(code, spec, test)
        finally:
            os._exit(1)  # a child never returns into the harness's loop
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


def _reset(sandboxed):
    """Between group candidates: kill every other process of the sandbox's pid namespace (only inside the
    sandbox, where this harness is pid 2 under the launcher) and empty the working dir and /tmp of what
    the candidates made."""
    if sandboxed:
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) not in (1, os.getpid()):
                try:
                    os.kill(int(entry), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        while True:  # reap the killed children (they are ours, re-parented or not)
            try:
                if os.waitpid(-1, 0)[0] == 0:
                    break
            except ChildProcessError:
                break
    roots = ["."] + (["/tmp"] if sandboxed else [])
    for root in roots:
        device = os.stat(root).st_dev
        for name in os.listdir(root):
            path = os.path.join(root, name)
            if os.path.abspath(path) != os.getcwd() and _made_by_candidates(path, device):
                _remove(path)


def _made_by_candidates(path, device):
    """Whether ``path`` (an entry of /tmp or of the working dir) was made by a candidate: owned by this
    uid (every candidate runs as it) and on the tree's own file system.

    Everything else there is the launcher's and is left in place: the read-only binds of allowed host
    paths that live under /tmp (a venv or checkout there holds the interpreter's prefix, which must be
    visible at its own absolute path, so the launcher cannot put it anywhere else) and the root-owned
    directories leading to them. Deleting those fails on the read-only file system (issue 14: every
    group reward was 0 with a venv under /tmp), and no candidate can change them: the binds are
    read-only, root's directories are 0755, and /tmp and /tmp/work are root-owned and sticky, so no
    candidate can rename or replace root's entries."""
    st = os.lstat(path)
    return st.st_uid == os.getuid() and st.st_dev == device


def _remove(path):
    """Delete a candidate's file or whole tree, restoring permissions a program may have taken away (an
    error here ends the run and is reported as the harness's failure: the programs not yet judged then
    get no reward, never a contaminated one)."""
    if os.path.isdir(path) and not os.path.islink(path):
        os.chmod(path, 0o700)
        for name in os.listdir(path):
            _remove(os.path.join(path, name))
        os.rmdir(path)
    else:
        os.unlink(path)


def _run_candidate(source, name, spec, results, tag):
    try:
        code = compile(source, name, "exec")
    except (SyntaxError, ValueError) as exc:
        results.write(json.dumps({**tag, "i": 0, "status": "error", "error": f"compile: {exc}"}).encode() + b"\n")
        return
    for i, test in enumerate(spec["inputs"]):
        record = _run_one(code, spec, test)
        results.write(json.dumps({**tag, "i": i, **record}).encode() + b"\n")
        if tag and record["status"] != "ok":
            return


def main():
    results = os.fdopen(3, "wb", buffering=0)
    results.write(b'{"ready": true}\n')
    try:
        _serve(results)
    except Exception as exc:  # the harness's own failure: say so, so that it is never taken for a program's
        results.write(json.dumps({"infra": f"test harness failed: {type(exc).__name__}: {exc}"}).encode() + b"\n")
        raise


def _serve(results):
    with open("tests.json") as f:
        spec = json.load(f)
    if "candidates" not in spec:
        with open("solution.py") as f:
            _run_candidate(f.read(), "solution.py", spec, results, {})
        return
    sources = []
    for j in range(spec["candidates"]):
        with open(f"solution_{j}.py") as f:
            sources.append(f.read())
    sandboxed = os.getcwd() == "/tmp/work" and os.getpid() == 2
    for j, source in enumerate(sources):
        _reset(sandboxed)
        _run_candidate(source, f"solution_{j}.py", spec, results, {"c": j})


if __name__ == "__main__":
    main()
