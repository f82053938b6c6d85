"""Kernel tests: fresh allocations are poisoned with NaN so a kernel that reads memory it never wrote fails.

torch fills ``torch.empty``/``empty_like`` outputs with NaN (floats) or the max value (ints) while
deterministic algorithms are on and ``fill_uninitialized_memory`` is set.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _poison_uninitialized_memory():
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.utils.deterministic.fill_uninitialized_memory = prev_fill
    torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
