"""Test tiers for vt_core.

- On a machine without CUDA, Triton kernels run in the interpreter: TRITON_INTERPRET=1 is set here,
  before anything imports triton (triton reads it when kernels are decorated).
- ``@pytest.mark.gpu`` tests are skipped without CUDA; ``@pytest.mark.slow`` marks long tests (they still run).
"""

import os

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
