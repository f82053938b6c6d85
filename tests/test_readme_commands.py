"""The README's first two commands are the ones CI runs, and the install script they share is sound."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README.md must start with a bash block"
    return [line.split("#")[0].strip() for line in block[1].splitlines() if line.strip()]


def test_readme_starts_with_the_main_job_and_the_tests_each_doing_its_own_setup():
    main_job, tests = _readme_commands()
    assert main_job == "bash .ci/install.sh && torchrun recipes/rl_code.py"
    assert tests == "bash .ci/install.sh && python -m pytest tests -q"


def test_ci_runs_the_readme_test_command_verbatim():
    _, tests = _readme_commands()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests in ci_lines


def test_install_script_parses_and_constraints_pin_the_tested_set():
    subprocess.run(["bash", "-n", str(ROOT / ".ci" / "install.sh")], check=True)
    pins = {}
    for line in (ROOT / ".ci" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f".ci/constraints.txt: {line!r} is not an exact pin"
            pins[name.lower().replace("_", "-")] = version
    assert "torch" not in pins  # install.sh chooses torch (CPU wheel or the machine's own CUDA build)
    for name in ("triton", "numpy", "transformers", "kernels", "trl", "liger-kernel", "pytest", "ruff"):
        assert name in pins, f".ci/constraints.txt does not pin {name}"
