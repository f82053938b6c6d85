import torch


def test_fresh_allocations_are_poisoned():
    assert torch.isnan(torch.empty(7)).all()
    assert torch.isnan(torch.empty_like(torch.zeros(3, 5))).all()
