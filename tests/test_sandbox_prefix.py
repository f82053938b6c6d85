"""The sandbox works wherever the interpreter lives (issue 14): a venv under /tmp, under the working directory
(also under /tmp/work, the sandbox's own working dir), behind a symlink, and one whose interpreter itself is
a copy under /tmp. In each, group mode gives the same rewards as one run per program, on right and wrong
programs, with no infrastructure failure. Each case creates a real venv (--without-pip: about a second) and
scores from its interpreter in a subprocess."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from vt_core.sandbox import isolation

SCRIPT = r"""
import json, sys
from vt_core.rewards.code import code_reward, code_reward_group
tests = {"inputs": ["1 2", "3 4"], "outputs": ["3", "7"]}
programs = ["```python\na, b = map(int, input().split())\nprint(a + b)\n```",
            "```python\na, b = map(int, input().split())\nprint(a - b)\n```",
            "```python\nraise ValueError('boom')\n```",
            "```python\nopen('/tmp/mark', 'w').write('x')\na, b = map(int, input().split())\nprint(a + b)\n```"]
group = code_reward_group(programs, tests, cache_size=0, per_test_time_s=2.0, total_time_s=10.0)
single = [code_reward(p, tests, cache_size=0, per_test_time_s=2.0, total_time_s=10.0) for p in programs]
print(json.dumps({"prefix": sys.prefix,
                  "group": [[r.reward, r.infra_error, r.reasons, r.extra.get("stderr", "")] for r in group],
                  "single": [[r.reward, r.infra_error, r.reasons, r.extra.get("stderr", "")] for r in single]}))
"""


@pytest.fixture(scope="module", autouse=True)
def _needs_isolation():
    iso = isolation()
    if not iso.active:
        pytest.fail(f"sandbox isolation is not available here: {iso.reason}")


def make_venv(path: Path, *extra: str) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", *extra, str(path)],
                   check=True, capture_output=True)
    return path


def score_from(python: Path, cwd: Path) -> dict:
    proc = subprocess.run([str(python), "-c", SCRIPT], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_rewards(out: dict, prefix: Path) -> None:
    assert out["prefix"] == str(prefix)
    for mode in ("group", "single"):
        got = [(reward, infra) for reward, infra, _, _ in out[mode]]
        assert got == [(1.0, ""), (0.0, ""), (0.0, ""), (1.0, "")], (mode, out[mode])
    assert [r[:3] for r in out["group"]] == [r[:3] for r in out["single"]]


@pytest.mark.parametrize("copies", [False, True], ids=["symlinked-python", "copied-python"])
def test_venv_under_tmp(tmp_path, copies):
    assert str(tmp_path).startswith(tempfile.gettempdir())
    venv = make_venv(tmp_path / "venv", *(["--copies"] if copies else []))
    check_rewards(score_from(venv / "bin" / "python", tmp_path), venv)


def test_venv_under_the_working_directory(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    venv = make_venv(project / ".venv")
    check_rewards(score_from(Path(".venv/bin/python"), project), venv)


def test_venv_under_the_sandbox_working_dir_path():
    """A checkout at /tmp/work/... puts the prefix inside the sandbox's own working dir."""
    made = not os.path.exists("/tmp/work")
    os.makedirs("/tmp/work", exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="vt-prefix-", dir="/tmp/work"))
    try:
        venv = make_venv(root / "venv", "--copies")
        check_rewards(score_from(venv / "bin" / "python", root), venv)
    finally:
        shutil.rmtree(root)
        if made:
            os.rmdir("/tmp/work")


def test_venv_behind_a_symlink(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    make_venv(real / "venv", "--copies")
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    python = tmp_path / "link" / "venv" / "bin" / "python"
    out = score_from(python, tmp_path)
    check_rewards(out, tmp_path / "link" / "venv")


def test_the_old_reset_is_caught_by_the_self_check(tmp_path):
    """Put back the reset of issue 14 (delete everything in /tmp): from a venv under /tmp the self-check stops
    naming the harness's failure on the launcher's entries instead of scoring every program 0."""
    venv = make_venv(tmp_path / "venv")
    script = ("from vt_core.rewards import code\n"
              "code._HARNESS = code._HARNESS.replace('    st = os.lstat(path)\\n', '    return True\\n')\n"
              "from vt_core.rewards.selfcheck import self_check\nself_check(['code'])\n")
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "VerifierSelfCheckFailed: verifier self-check failed for 'code' (group scoring)" in proc.stderr
    # the first launcher entry it meets: the read-only bind itself, or a root-owned directory leading to it
    assert re.search(r"test harness failed: (OSError: \[Errno 30\] Read-only file system|"
                     r"PermissionError: \[Errno 1\] Operation not permitted): '/tmp/", proc.stderr), proc.stderr[-2000:]
