"""group_advantages against per-group loops written from the estimator definitions."""

import math

import pytest
import torch

from vt_core.kernels import expand_to_tokens, group_advantages
from vt_core.kernels.advantages import group_advantages_naive


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo", "reinforce_pp"])
@pytest.mark.parametrize("lam", [0.0, 0.7])
def test_estimators_with_group_size(estimator, lam):
    rewards = torch.tensor([1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0.5, 0, 0, 0], dtype=torch.float32)
    groups = [list(range(i, i + 4)) for i in range(0, 16, 4)]
    adv, w, flags = group_advantages(rewards, group_size=4, estimator=estimator, mgpo_lambda=lam,
                                     return_zero_variance=True)
    ref_adv, ref_w, ref_flags = group_advantages_naive(rewards.tolist(), groups, estimator, lam)
    ref_adv = ref_adv * ref_w
    assert adv.dtype == torch.float32 and w.dtype == torch.float32
    torch.testing.assert_close(adv, ref_adv.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w, ref_w.float(), atol=1e-6, rtol=1e-6)
    assert torch.equal(flags, ref_flags)


def test_group_ids_uneven_groups_and_singletons():
    rewards = torch.tensor([0.0, 1.0, 1.0, 0.3, 2.0, 0.0, 1.0])
    ids = torch.tensor([7, 3, 7, 3, 9, 7, 3])
    groups = [[1, 3, 6], [0, 2, 5], [4]]
    for estimator in ("grpo", "dr_grpo", "rloo"):
        adv, w = group_advantages(rewards, group_ids=ids, estimator=estimator, mgpo_lambda=0.5)
        ref_adv, ref_w, _ = group_advantages_naive(rewards.tolist(), groups, estimator, 0.5)
        torch.testing.assert_close(adv, (ref_adv * ref_w).float(), atol=1e-5, rtol=1e-5)
    assert adv[4] == 0


def test_mgpo_lambda_zero_is_grpo_exactly_and_weight_values():
    rewards = torch.randint(0, 2, (64,)).float()
    plain, w_plain = group_advantages(rewards, group_size=8)
    mgpo0, w0 = group_advantages(rewards, group_size=8, estimator="grpo", mgpo_lambda=0.0)
    assert torch.equal(plain, mgpo0) and torch.all(w0 == 1) and torch.all(w_plain == 1)
    _, w = group_advantages(torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0]), group_size=2, mgpo_lambda=2.0)
    assert w[0].item() == pytest.approx(math.exp(-2.0 * math.log(2.0)), rel=1e-6)
    assert w[2].item() == pytest.approx(1.0)


def test_expand_and_checks():
    cu = torch.tensor([0, 2, 2, 5])
    assert expand_to_tokens(torch.tensor([1.0, 2.0, 3.0]), cu).tolist() == [1.0, 1.0, 3.0, 3.0, 3.0]
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(6), group_size=4)
    with pytest.raises(ValueError, match="exactly one"):
        group_advantages(torch.zeros(6))
    with pytest.raises(ValueError, match="estimator"):
        group_advantages(torch.zeros(6), group_size=3, estimator="ppo")
    with pytest.raises(ValueError, match="rewards"):
        group_advantages(torch.zeros(2, 3), group_size=3)
    with pytest.raises(ValueError, match="cu_seqlens"):
        expand_to_tokens(torch.zeros(3), torch.tensor([0, 1]))
