"""Reward shaping: overlong penalty and zero-sum Long2Short, checked by hand on small examples."""

import pytest
import torch

from vt_core.rewards.shaping import apply_overlong_penalty, long2short, overlong_penalty


def test_overlong_penalty_by_hand():
    # max_len 100, buffer 20: free up to 80, linear to -coef at 100, -coef beyond.
    got = overlong_penalty([10, 80, 81, 90, 100, 120], max_len=100, buffer_len=20, coef=0.5)
    assert got == pytest.approx([0.0, 0.0, -0.025, -0.25, -0.5, -0.5])
    t = overlong_penalty(torch.tensor([79, 95]), max_len=100, buffer_len=20)
    assert t.dtype == torch.float32 and torch.allclose(t, torch.tensor([0.0, -0.75]))


def test_apply_overlong_penalty_keeps_the_input_kind():
    r = apply_overlong_penalty(torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64), torch.tensor([70, 90, 110]), 100, 20)
    assert r.dtype == torch.float64 and torch.allclose(r, torch.tensor([1.0, 0.5, -1.0], dtype=torch.float64))
    assert apply_overlong_penalty([1.0], [100], 100, 100) == pytest.approx([0.0])
    with pytest.raises(ValueError, match="buffer_len"):
        overlong_penalty([1], max_len=10, buffer_len=0)
    with pytest.raises(ValueError, match="same shape"):
        apply_overlong_penalty([1.0, 1.0], [5], 10, 5)


def test_long2short_by_hand():
    rewards = [1, 1, 1, 0]
    lengths = [100, 200, 400, 50]
    # s = [1/100, 1/200, 1/400]; mean = 7/1200; deviations = [5, -1, -4]/1200; max |dev| = 5/1200
    # shaping terms = 0.2 * [1, -0.2, -0.8]; the incorrect answer is untouched.
    got = long2short(rewards, lengths, group_size=4)
    assert got == pytest.approx([1.2, 0.96, 0.84, 0.0])
    terms = [g - r for g, r in zip(got, rewards)]
    assert sum(terms[:3]) == pytest.approx(0.0, abs=1e-12)
    assert max(abs(x) for x in terms) == pytest.approx(0.2)


def test_long2short_groups_left_unchanged():
    rewards = [1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    lengths = [10, 5, 5, 5, 7, 7, 7, 3, 9, 9, 9, 9]
    # group 0: one correct answer; group 1: correct answers all of length 7; group 2: none correct.
    assert long2short(rewards, lengths, group_size=4) == pytest.approx([float(r) for r in rewards])


def test_long2short_vectorized_matches_per_group_loop():
    g = torch.Generator().manual_seed(0)
    n_groups, size = 7, 8
    rewards = (torch.rand(n_groups * size, generator=g) > 0.4).float()
    lengths = torch.randint(1, 500, (n_groups * size,), generator=g)
    perm = torch.randperm(n_groups * size, generator=g)
    group_ids = (torch.arange(n_groups * size) // size * 13)[perm]  # arbitrary ids, any order
    got = long2short(rewards[perm], lengths[perm], group_ids=group_ids, lam=0.3)
    assert got.dtype == torch.float32
    for gid in group_ids.unique():
        m = group_ids == gid
        r, L = rewards[perm][m].double(), lengths[perm][m].double()
        ok = r > 0
        expected = r.clone()
        if ok.sum() >= 2 and L[ok].unique().numel() > 1:
            s = 1.0 / L[ok]
            d = s - s.mean()
            expected[ok] = r[ok] + 0.3 * d / d.abs().max()
            assert (expected[ok] - r[ok]).sum().abs() < 1e-9  # zero-sum within the group
        torch.testing.assert_close(got[m].double(), expected, rtol=1e-6, atol=1e-6)


def test_long2short_explicit_correct_mask_and_errors():
    # correct given explicitly: rewards may already be shaped (e.g. overlong penalty) and not 0/1.
    got = long2short([0.9, 0.7, -0.2], [10, 20, 5], group_size=3, correct=[True, True, False], lam=0.2)
    assert got == pytest.approx([1.1, 0.5, -0.2])
    with pytest.raises(ValueError, match="exactly one of group_size and group_ids"):
        long2short([1.0], [1])
    with pytest.raises(ValueError, match="divide"):
        long2short([1.0, 1.0, 1.0], [1, 2, 3], group_size=2)
    with pytest.raises(ValueError, match="positive"):
        long2short([1.0, 1.0], [0, 2], group_size=2)
