"""The sandbox itself: statuses, limits, I/O, isolation detection, the pool and a leak soak (runs for real)."""

import ast
import os
import time

import pytest

from vt_core import sandbox
from vt_core.sandbox import Limits, SandboxPool, SandboxUnavailable, isolation, run_python
from vt_core.sandbox.health import host_snapshot, new_children
from vt_core.sandbox.isolation import python_roots


@pytest.fixture(scope="module", autouse=True)
def _needs_isolation():
    iso = isolation()
    if not iso.active:
        pytest.fail(f"sandbox isolation is not available here: {iso.reason}")


def test_isolation_is_detected_and_described():
    iso = isolation()
    assert iso.mode == "namespaces" and os.path.exists(iso.launcher)
    assert "pid" in iso.describe() and "non-root uid" in iso.describe()


def test_ok_with_stdin():
    res = run_python("import sys\nprint(sys.stdin.read()[::-1])", stdin="abc", time_limit_s=5)
    assert (res.status, res.returncode, res.stdout) == ("ok", 0, "cba\n")
    assert res.isolated and 0 < res.wall_s < 5


def test_large_stdin_and_stdout_stream_concurrently():
    data = "x" * (3 << 20)
    res = run_python("import sys\nd = sys.stdin.read()\nsys.stdout.write(d)\nsys.stderr.write(d[:10])", stdin=data)
    assert res.status == "ok" and res.stdout == data and res.stderr == "x" * 10


def test_error_status_and_stderr():
    res = run_python("raise ValueError('boom')")
    assert res.status == "error" and res.returncode == 1 and "ValueError: boom" in res.stderr


def test_exit_code_and_signal_are_reported():
    assert run_python("import sys; sys.exit(3)").returncode == 3
    res = run_python("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    assert res.status == "error" and res.returncode == -11


def test_timeout_kills_at_wall_clock():
    t0 = time.monotonic()
    res = run_python("import time; time.sleep(100)", time_limit_s=1)
    assert res.status == "timeout" and res.returncode is None and time.monotonic() - t0 < 3


def test_memory_limit():
    res = run_python("x = bytearray(2 * 2**30)", memory_mb=256)
    assert res.status == "memory"


def test_output_limit():
    res = run_python("while True: print('y' * 1000)", limits=Limits(max_output_bytes=1 << 16))
    assert res.status == "output_limit" and len(res.stdout) == 1 << 16


def test_non_utf8_output_is_replaced():
    res = run_python("import sys; sys.stdout.buffer.write(b'ok\\xff\\xfe\\n')")
    assert res.status == "ok" and res.stdout.startswith("ok") and "\ufffd" in res.stdout


def test_environment_is_empty_and_workdir_private():
    code = "import os\nprint(sorted(k for k in os.environ if k != 'LC_CTYPE'), os.getcwd(), sorted(os.listdir('.')))"
    res = run_python(code, files={"data.txt": b"hello"})
    assert res.stdout.split("\n")[0] == "[] /tmp/work ['data.txt', 'main.py']"


def test_result_pipe_and_early_stop():
    seen = []

    def on_line(line):
        seen.append(line)
        return line != b"2"

    code = "import os, time\nfor i in range(10):\n    os.write(3, b'%d\\n' % i)\n    time.sleep(0.05)"
    res = run_python(code, on_result_line=on_line, time_limit_s=10)
    assert seen == [b"0", b"1", b"2"] and res.details["stopped"] and res.wall_s < 0.5 + 1
    assert run_python("import os; os.write(3, b'r')", result_pipe=True).result == b"r"


def test_result_pipe_absent_without_request():
    res = run_python("import os\ntry:\n    os.write(3, b'x')\nexcept OSError as e:\n    print(e.errno)")
    assert res.stdout.strip() == "9"  # EBADF: nothing but stdio is open


def test_no_gpu_devices_visible():
    res = run_python("import os\nprint(sorted(os.listdir('/dev')), os.path.exists('/sys'))")
    devices = ['fd', 'full', 'null', 'random', 'stderr', 'stdin', 'stdout', 'urandom', 'zero']
    assert res.stdout.strip() == f"{devices} False"


def test_only_allowed_paths_are_visible(monkeypatch):
    code = "import os, sys\nprint(sorted(os.listdir('/')), os.path.exists(sys.argv[1]), os.path.exists('/work'))"
    repo_file = os.path.abspath(__file__)
    res = run_python(code, args=[repo_file])
    visible, repo_seen, work_seen = res.stdout.rsplit(" ", 2)
    allowed = {*(p.strip("/") for p in sandbox.runner.VISIBLE_PATHS), "proc", "dev", "tmp",
               *(p.split("/")[1] for p in python_roots())}
    assert set(ast.literal_eval(visible)) <= allowed
    assert (repo_seen, work_seen.strip()) == ("False", "False")
    monkeypatch.setenv("VT_SANDBOX_ALLOW", os.path.dirname(repo_file))
    sandbox.runner._mount_args.cache_clear()
    try:
        res = run_python(code, args=[repo_file])
    finally:
        monkeypatch.delenv("VT_SANDBOX_ALLOW")
        sandbox.runner._mount_args.cache_clear()
    assert res.stdout.split()[-2] == "True"
    write = run_python("import sys\ntry:\n    open(sys.argv[1], 'a')\nexcept OSError as e:\n    print(e.errno)",
                       args=[repo_file])
    assert write.stdout.strip() == "2"  # ENOENT: the repository is not there at all


def test_argument_checks():
    with pytest.raises(ValueError, match="time_limit_s"):
        run_python("print(1)", time_limit_s=0)
    with pytest.raises(ValueError, match="workers"):
        SandboxPool(workers=0)


def test_refuses_without_isolation_unless_unsafe(monkeypatch):
    monkeypatch.setattr(sandbox.runner, "isolation", lambda: sandbox.Isolation("none", reason="test"))
    with pytest.raises(SandboxUnavailable, match="refusing"):
        run_python("print(1)")
    res = run_python("import os; os.write(3, b'r'); print(input())", stdin="hi", unsafe_no_isolation=True,
                     result_pipe=True)
    assert (res.status, res.stdout, res.result, res.isolated) == ("ok", "hi\n", b"r", False)
    assert host_snapshot().unsafe_tmpdirs == ()


def test_pool_runs_concurrently_in_order():
    with SandboxPool(workers=2, time_limit_s=5) as pool:
        t0 = time.monotonic()
        results = pool.map(["import time; time.sleep(0.5); print(%d)" % i for i in range(4)])
        elapsed = time.monotonic() - t0
    assert [r.stdout for r in results] == ["0\n", "1\n", "2\n", "3\n"]
    assert elapsed < 4 * 0.5 + 0.9  # two at a time, not one


def test_soak_leaves_nothing_behind():
    """A short soak (the 10,000-run soak is bench/bench_sandbox.py --soak): no fd, zombie, process,
    temp dir or thread leak, and bounded memory growth, across a mix of ok / error / timeout runs."""
    codes = ["print(1)", "raise SystemExit(2)", "import os\nif os.fork() == 0:\n    import time; time.sleep(60)",
             "import time; time.sleep(60)"]
    with SandboxPool(workers=2, time_limit_s=0.5) as pool:
        pool.map(codes[:2])
        before = host_snapshot()
        results = pool.map([codes[i % 4] for i in range(120)])
    after = host_snapshot()
    assert {r.status for r in results} == {"ok", "error", "timeout"}
    assert after.open_fds <= before.open_fds
    assert new_children(before, after) == () and after.sandbox_processes == () and after.unsafe_tmpdirs == ()
    assert after.rss_mb - before.rss_mb < 20


def test_callback_error_still_reaps_the_run():
    def boom(line):
        raise KeyError("callback failed")

    before = host_snapshot()
    with pytest.raises(KeyError, match="callback failed"):
        run_python("import os, time\nos.write(3, b'x\\n')\ntime.sleep(60)", on_result_line=boom, time_limit_s=30)
    snap = host_snapshot()
    assert new_children(before, snap) == () and snap.sandbox_processes == ()
