"""Test tiers for vt_core.

- On a machine without CUDA, Triton kernels run in the interpreter: TRITON_INTERPRET=1 is set here,
  before anything imports triton (triton reads it when kernels are decorated).
- ``@pytest.mark.gpu`` tests are skipped without CUDA; ``@pytest.mark.slow`` marks long tests (they still run).
"""

import importlib.util
import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def load_recipe():
    """Import recipes/<name>.py as a module (recipes/ is not a package) to call its main(argv) in-process."""

    def load(name: str):
        path = Path(__file__).resolve().parent.parent / "recipes" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"recipe_{name}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
        spec.loader.exec_module(module)
        return module

    return load
