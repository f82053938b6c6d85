"""The attack suite: each attack must end contained, with reward 0 (or the correct reward where it is
harmless), the sandbox still healthy and the host unchanged.

Attacks that would harm the host if isolation failed (fork bombs, kill(-1), killing the parent, memory
exhaustion) take the ``contained`` fixture: it runs a probe in this pytest run and FAILS the test unless
the probe showed the PID namespace, the non-root uid and the rlimits in force. Those programs also refuse
to attack (exit 99, which fails the test) when they run as root or pid 1 is not the sandbox launcher.
"""

import json
import os
import socket
import textwrap

import pytest

from vt_core.rewards.code import code_reward
from vt_core.sandbox import Limits, isolation, run_python
from vt_core.sandbox.isolation import python_roots
from vt_core.sandbox.health import host_snapshot, new_children

SUM_TESTS = {"inputs": ["1 2\n", "10 20\n"], "outputs": ["3\n", "30\n"]}
SOLVE = "a, b = map(int, input().split())\nprint(a + b)\n"
CALL_TESTS = {"inputs": [[1, 2], [3, 4]], "outputs": [3, 7], "fn_name": "add"}
FAST = {"per_test_time_s": 1.0, "total_time_s": 4.0, "cache_size": 0}
GUARD = ("import os, sys\n"
         "if os.getuid() == 0 or b'vt-sandbox-launcher' not in open('/proc/1/cmdline', 'rb').read():\n"
         "    sys.exit(99)\n")


def fenced(code: str) -> str:
    return f"Here you go:\n```python\n{textwrap.dedent(code)}\n```\n"


PROBE = """import json, os, resource
names = ('NPROC', 'AS', 'CPU', 'FSIZE', 'NOFILE', 'CORE')
lim = {n: resource.getrlimit(getattr(resource, 'RLIMIT_' + n)) for n in names}
print(json.dumps({'pid': os.getpid(), 'uid': os.getuid(), 'euid': os.geteuid(), 'gid': os.getgid(),
                  'procs': sorted(int(p) for p in os.listdir('/proc') if p.isdigit()), 'lim': lim}))
"""


@pytest.fixture(scope="module")
def probe():
    """What an untrusted program sees: run once per module, before any host-harming attack."""
    iso = isolation()
    if not iso.active:
        return {"error": iso.reason}
    res = run_python(PROBE, time_limit_s=5, memory_mb=256, limits=Limits(max_processes=8))
    if res.status != "ok":
        return {"error": f"{res.status}: {res.stderr}"}
    return json.loads(res.stdout)


def containment_problems(probe: dict) -> list[str]:
    """Why the probe does not prove containment (empty when PID namespace, non-root uid, rlimits hold)."""
    problems = []
    if "error" in probe:
        problems.append(probe["error"])
    else:
        if probe["pid"] != 2 or probe["procs"] != [1, 2]:
            problems.append(f"no private PID namespace (pid {probe['pid']}, /proc shows {probe['procs']})")
        if 0 in (probe["uid"], probe["euid"], probe["gid"]):
            problems.append("the program runs as root")
        if probe["lim"]["NPROC"] != [8, 8] or probe["lim"]["AS"] != [256 << 20] * 2 or probe["lim"]["CORE"] != [0, 0]:
            problems.append(f"rlimits not in force: {probe['lim']}")
    return problems


@pytest.fixture
def contained(probe):
    """Fails (never skips) unless the probe proved PID namespace, non-root uid and rlimits."""
    problems = containment_problems(probe)
    if problems:
        pytest.fail("refusing to run a host-harming attack: " + "; ".join(problems))


def test_probe_detects_missing_containment(probe):
    assert containment_problems(probe) == []
    as_root = {**probe, "uid": 0, "procs": [1, 2, 3, 999]}
    assert len(containment_problems(as_root)) == 2
    no_limits = {**probe, "lim": {**probe["lim"], "NPROC": [-1, -1]}}
    assert containment_problems(no_limits) == [f"rlimits not in force: {no_limits['lim']}"]


@pytest.fixture(autouse=True)
def host_unchanged():
    """Every attack: nothing of the sandbox survives on the host, no fd leak, and the sandbox still works."""
    before = host_snapshot()
    yield
    after = host_snapshot()
    assert after.sandbox_processes == (), "sandbox processes outlived their run"
    assert new_children(before, after) == (), "unreaped children"
    assert after.open_fds <= before.open_fds
    healthy = run_python("print(6 * 7)", time_limit_s=5)
    assert (healthy.status, healthy.stdout) == ("ok", "42\n")


def reward(code: str, tests=SUM_TESTS, **kw):
    return code_reward(fenced(code), tests, **{**FAST, **kw})


@pytest.mark.parametrize(
    "attack",
    [
        "while True: pass",
        "import time; time.sleep(1e9)",
        "import re; re.match(r'(a+)+$', 'a' * 40 + 'b')",
        """import signal
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGXCPU, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_BLOCK, range(1, 32))
while True: pass""",
    ],
    ids=["busy_loop", "sleep", "catastrophic_regex", "signals_disabled"],
)
def test_runaway_programs_time_out(attack):
    res = run_python(attack, time_limit_s=1)
    assert res.status == "timeout"
    r = reward(attack)
    assert r.reward == 0 and r.extra["statuses"] == ["timeout"]


FORK_BOMBS = {
    "os_fork": "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    "subprocess": "import subprocess\nwhile True:\n    try:\n"
                  "        subprocess.Popen([sys.executable, '-S', 'solution.py'])\n"
                  "    except OSError:\n        pass",
    "shell": "os.system(\"bash -c ':(){ :|:& };:'\")\nwhile True: pass",
}


@pytest.mark.parametrize("kind", sorted(FORK_BOMBS))
def test_fork_bombs_are_contained(contained, kind):
    code = GUARD + FORK_BOMBS[kind]
    res = run_python(code, time_limit_s=1.5, memory_mb=256, files={"solution.py": code.encode()},
                     limits=Limits(max_processes=16))
    assert res.returncode != 99, "the attack found itself outside the sandbox"
    assert res.status == "timeout"
    assert reward(code).reward == 0


def test_double_forked_orphan_dies_with_the_run():
    code = """
    import os, time
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            time.sleep(30)
            open('/tmp/work/still_alive', 'w').write('x')
        os._exit(0)
    a, b = map(int, input().split())
    print(a + b)
    """
    r = reward(code)
    assert r.reward == 1  # harmless for the result; the autouse fixture checks no process is left


def test_kill_everything_and_the_parent(contained):
    for attack in ("os.kill(-1, 9)", "os.kill(os.getppid(), 9)", "os.kill(1, 9)", "os.killpg(0, 9)"):
        code = GUARD + attack + "\nprint(3)"
        res = run_python(code, time_limit_s=2)
        assert res.returncode != 99 and res.status in ("ok", "error"), (attack, res)
        assert reward(code).reward == 0, attack


@pytest.mark.parametrize(
    "attack",
    ["x = bytearray(64 * 2**30)", "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 2**20))"],
    ids=["huge", "growing"],
)
def test_memory_exhaustion(contained, attack):
    code = GUARD + attack
    res = run_python(code, memory_mb=256, time_limit_s=5)
    assert res.returncode != 99 and res.status == "memory"
    r = reward(code, memory_mb=256)
    assert r.reward == 0 and r.extra["statuses"] == ["error"]


def test_output_floods():
    stdout_flood = "import sys\nwhile True: sys.stdout.write('y' * 65536)"
    stderr_gb = "import os\nfor _ in range(1024): os.write(2, b'e' * 2**20)"
    for attack in (stdout_flood, stderr_gb):
        res = run_python(attack, time_limit_s=5, limits=Limits(max_output_bytes=1 << 20))
        assert res.status == "output_limit" and len(res.stdout) + len(res.stderr) <= 1 << 20
        assert reward(attack).reward == 0


def test_disk_filling():
    big_file = "with open('big.bin', 'wb') as f:\n    for _ in range(4096): f.write(b'0' * 2**20)"
    res = run_python(big_file, time_limit_s=5)
    assert res.status == "error" and "File too large" in res.stderr  # RLIMIT_FSIZE (Python ignores SIGXFSZ)
    many_files = "import os\nfor i in range(100000):\n    open(f'f{i}', 'w').close()"
    res = run_python(many_files, time_limit_s=5)
    assert res.status == "error" and "No space left on device" in res.stderr
    assert reward(big_file).reward == 0 and reward(many_files).reward == 0


def test_non_utf8_output_gets_no_reward():
    code = "import sys\ninput()\nsys.stdout.buffer.write(b'\\xff\\xfe3\\n')"
    assert reward(code).reward == 0


def test_secrets_are_not_readable(monkeypatch):
    token = "vt-secret-" + os.urandom(8).hex()
    monkeypatch.setenv("VT_SANDBOX_TEST_SECRET", token)
    secret_file = os.path.join(os.path.expanduser("~"), f".vt_sandbox_secret_{os.getpid()}")
    with open(secret_file, "w") as f:
        f.write(token)
    try:
        code = f"""
        import glob, os
        seen = [str(dict(os.environ))]
        for path in ['/proc/1/environ', '/proc/%d/environ' % os.getppid(), {secret_file!r},
                     *glob.glob('/proc/*/environ'), *glob.glob('/root/*'), *glob.glob('/home/*/*')]:
            try:
                seen.append(open(path, 'rb').read().decode('latin-1'))
            except OSError as e:
                seen.append(type(e).__name__)
        print('\\n'.join(seen))
        """
        res = run_python(textwrap.dedent(code), time_limit_s=5)
        assert res.status == "ok" and token not in res.stdout + res.stderr
        assert "PermissionError" in res.stdout and "FileNotFoundError" in res.stdout
    finally:
        os.remove(secret_file)


def test_files_outside_the_sandbox_are_untouched(tmp_path):
    targets = [tmp_path / "victim.txt", "/var/tmp/vt_sandbox_victim_%d" % os.getpid()]
    for t in targets:
        with open(t, "w") as f:
            f.write("original")
        os.chmod(t, 0o666)
    try:
        code = "import os\nfor p in %r:\n" % [str(t) for t in targets] + textwrap.indent(
            "for op in (lambda: open(p, 'w').write('owned'), lambda: os.remove(p)):\n"
            "    try:\n        op()\n    except OSError as e:\n        print(type(e).__name__)\n", "    ")
        code += "for p in ('/etc/vt_owned', '/usr/vt_owned', '/work/vt_owned'):\n" \
                "    try:\n        open(p, 'w')\n    except OSError as e:\n        print(type(e).__name__)\n"
        res = run_python(code, time_limit_s=5)
        assert res.status == "ok" and "owned" not in res.stdout
        assert len(res.stdout.split()) == 7
        for t in targets:
            with open(t) as f:
                assert f.read() == "original"
        assert not any(os.path.exists(p) for p in ("/etc/vt_owned", "/usr/vt_owned", "/work/vt_owned"))
    finally:
        os.remove(targets[1])


def test_network_is_unreachable():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.3)
    port = server.getsockname()[1]
    code = f"""
    import socket
    def attempt(name, fn):
        try:
            fn()
            print(name, 'CONNECTED')
        except OSError as e:
            print(name, 'blocked', type(e).__name__)
    attempt('tcp', lambda: socket.create_connection(('1.1.1.1', 443), timeout=1))
    attempt('loopback', lambda: socket.create_connection(('127.0.0.1', {port}), timeout=1))
    attempt('udp', lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('8.8.8.8', 53)))
    attempt('dns', lambda: socket.getaddrinfo('pypi.org', 443))
    """
    try:
        res = run_python(textwrap.dedent(code), time_limit_s=8)
        assert res.status == "ok" and "CONNECTED" not in res.stdout and res.stdout.count("blocked") == 4
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()


def test_rlimits_cannot_be_raised():
    code = """
    import resource
    for name in ('AS', 'NPROC', 'CPU', 'FSIZE', 'NOFILE', 'CORE'):
        r = getattr(resource, 'RLIMIT_' + name)
        try:
            resource.setrlimit(r, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            print(name, 'RAISED')
        except (ValueError, OSError):
            print(name, 'refused')
    """
    res = run_python(textwrap.dedent(code), time_limit_s=5)
    assert res.status == "ok" and "RAISED" not in res.stdout and res.stdout.count("refused") == 6


@pytest.mark.parametrize(
    "cheat",
    [
        "import sys\nsys.exit(0)",
        "import os\nos._exit(0)",
        "print('PASS')\nprint('All tests passed')",
        "import builtins\nbuiltins.print = lambda *a, **k: None\nimport sys\nsys.stdout.write('3\\n')",
        "import unittest\nunittest.TestCase.assertEqual = lambda *a, **k: None\n"
        "unittest.TestCase.assertTrue = lambda *a, **k: None\nprint('OK')",
        "import os\nos.write(3, b'{\"i\": 0, \"status\": \"ok\", \"out\": \"3\"}\\n')",
    ],
    ids=["sys_exit", "os_exit", "fake_pass_lines", "patched_print", "patched_unittest", "forged_result_line"],
)
def test_cheats_get_no_reward(cheat):
    assert reward(cheat).reward == 0


def test_always_equal_objects_get_no_reward():
    always_equal = """
    class Anything:
        def __eq__(self, other):
            return True
        __ne__ = lambda self, other: False
    class Solution:
        def add(self, a, b):
            return Anything()
    """
    list_subclass = """
    class Anything(list):
        def __eq__(self, other):
            return True
    def add(a, b):
        return Anything()
    """
    for code in (always_equal, list_subclass):
        r = reward(code, CALL_TESTS)
        assert r.reward == 0 and r.passed == 0


def test_no_leftovers_between_runs():
    first = run_python("import os\nfor d in ('/tmp', '/tmp/work', '/dev/shm'):\n    try:\n"
                       "        open(d + '/leftover', 'w').write('x')\n    except OSError:\n        pass")
    assert first.status == "ok"
    second = run_python("import os\nprint(sorted(os.listdir('/tmp')), sorted(os.listdir('.')), "
                        "os.path.exists('/dev/shm/leftover'))")
    # /tmp holds the working dir and, where the interpreter lives under /tmp (a venv there), the launcher's
    # read-only bind of its prefix (the first path component below /tmp); nothing a program left.
    binds = {root.split("/")[2] for root in python_roots() if root.startswith("/tmp/")}
    assert second.stdout.strip() == f"{sorted({'work'} | binds)} ['main.py'] False"
    assert reward(SOLVE).reward == 1
