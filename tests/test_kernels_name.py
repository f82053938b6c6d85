"""The repository's top-level `kernels/` folder never shadows another distribution named `kernels`.

transformers >= 5.25 imports Hugging Face's `kernels` distribution. Whenever the repository root is first on
sys.path (`python -m pytest`, `python -c`, `python -`, a REPL or notebook started there) a regular package
folder named `kernels` used to win and transformers failed with `cannot import name 'CUDAProperties'`.
These tests start fresh interpreters in the repository root with a stand-in `kernels` distribution on
PYTHONPATH, the situation of 2026-12-04, and check what `import kernels` gives.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAND_IN = "stand-in kernel hub"


@pytest.fixture()
def stand_in(tmp_path: Path) -> Path:
    """A folder holding an installed-looking distribution `kernels` (package + dist-info metadata)."""
    pkg = tmp_path / "kernels"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .layer import CUDAProperties\n__version__ = '0.19.1'\n")
    (pkg / "layer.py").write_text(f"CUDAProperties = {STAND_IN!r}\n")
    meta = tmp_path / "kernels-0.19.1.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: kernels\nVersion: 0.19.1\n")
    return tmp_path


def _python(args: list[str], pythonpath: Path | None, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, input=stdin, capture_output=True,
                          text=True, timeout=120)


PROBE = (
    "import sys, kernels; from kernels import CUDAProperties; import kernels.layer; "
    "assert sys.path[0] in ('', {root!r}), sys.path[:2]; print(CUDAProperties, kernels.__file__)"
).format(root=str(ROOT))


@pytest.mark.parametrize("how", ["-c", "stdin", "-m"])
def test_stand_in_distribution_wins_from_the_repository_root(stand_in: Path, how: str):
    # -c, a script on stdin (as a REPL or notebook kernel runs code) and -m all put the working directory,
    # here the repository root, first on sys.path.
    if how == "-c":
        proc = _python(["-c", PROBE], stand_in)
    elif how == "stdin":
        proc = _python(["-"], stand_in, stdin=PROBE)
    else:
        (stand_in / "kernels_probe.py").write_text(PROBE)
        proc = _python(["-m", "kernels_probe"], stand_in)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [*STAND_IN.split(), str(stand_in / "kernels" / "__init__.py")]


def test_without_another_distribution_the_folder_looks_absent():
    # -S: no site-packages, so no `kernels` distribution anywhere. What is left must read as a PEP 420
    # portion (no __file__, nothing importable below it), which transformers' availability probe skips.
    code = (
        "import kernels\n"
        "assert kernels.__file__ is None and list(kernels.__path__) == [], kernels.__dict__.keys()\n"
        "try:\n    import kernels.linear_logprobs\nexcept ModuleNotFoundError:\n    print('absent')\n"
    )
    proc = _python(["-S", "-c", code], None)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "absent"


def test_vt_core_kernels_is_still_the_api():
    proc = _python(["-c", "import vt_core.kernels as k; print(k.__name__, callable(k.linear_logprobs))"], None)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["vt_core.kernels", "True"]


def test_transformers_imports_from_the_repository_root():
    # The failure as it was seen: transformers' hub integration imports `kernels` when it is installed.
    proc = _python(["-c", "import transformers.activations, transformers.integrations.hub_kernels; print('ok')"],
                   None)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
