"""The sampling step's torch reference: RNG stream, truncation semantics and the sampled distribution."""

import math

import pytest
import torch

from vt_core.kernels.sampling import philox4x32, philox_uniform, sample
from vt_core.kernels.sampling import sample_distribution_naive


def _words(*values):
    return tuple(torch.tensor([v], dtype=torch.int64) for v in values)


def test_philox_known_answers():
    # Known-answer vectors of Philox-4x32-10 (Salmon et al., Random123).
    out = philox4x32(_words(0, 0, 0, 0), _words(0, 0))
    assert [int(x) for x in out] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    f = 0xFFFFFFFF
    out = philox4x32(_words(f, f, f, f), _words(f, f))
    assert [int(x) for x in out] == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    out = philox4x32(_words(0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), _words(0xA4093822, 0x299F31D0))
    assert [int(x) for x in out] == [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_uniforms_are_in_range_and_depend_on_seed_and_offset():
    u = philox_uniform(torch.tensor([1, 1, 2, 2**40 + 7]), torch.tensor([0, 1, 0, 0]))
    assert u.dtype == torch.float64 and bool(((u >= 0) & (u < 1)).all())
    assert len(set(u.tolist())) == 4
    many = philox_uniform(torch.full((20000,), 123), torch.arange(20000))
    assert abs(many.mean().item() - 0.5) < 0.01 and abs(many.var().item() - 1 / 12) < 0.003


def _chi2_critical(df: int, z: float = 3.09) -> float:
    # Wilson-Hilferty approximation of the chi-square quantile (z = 3.09: the 0.999 quantile).
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


@pytest.mark.parametrize(
    "temperature, top_k, top_p, min_p",
    [(1.0, 0, 1.0, 0.0), (0.7, 0, 1.0, 0.0), (1.0, 5, 1.0, 0.0), (1.0, 0, 0.8, 0.0), (1.3, 0, 1.0, 0.1),
     (0.9, 8, 0.9, 0.05)],
)
def test_empirical_distribution_matches(temperature, top_k, top_p, min_p):
    V, N = 16, 20000
    logits = torch.randn(V, generator=torch.Generator().manual_seed(7)) * 1.5
    tokens, raw, proc = sample(logits.expand(N, V), temperature, top_k, top_p, min_p,
                               seeds=torch.full((N,), 99), offsets=torch.arange(N))
    expected = sample_distribution_naive(logits, temperature, top_k, top_p, min_p)
    counts = torch.bincount(tokens, minlength=V).double()
    assert counts[expected == 0].sum() == 0, "sampled a token the filters drop"
    support = expected > 0
    e = expected[support] * N
    chi2 = float(((counts[support] - e) ** 2 / e).sum())
    assert chi2 < _chi2_critical(int(support.sum()) - 1), f"chi-square {chi2:.1f} too large"
    torch.testing.assert_close(proc.double(), expected.log()[tokens], rtol=0, atol=1e-5)
    torch.testing.assert_close(raw, torch.log_softmax(logits, -1)[tokens], rtol=0, atol=1e-6)


def test_greedy_and_batch_invariance():
    logits = torch.randn(5, 300)
    tokens, raw, proc = sample(logits, temperature=0.0)
    assert torch.equal(tokens, logits.argmax(-1)) and torch.equal(proc, torch.zeros(5))
    torch.testing.assert_close(raw, torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1))
    seeds, offsets = torch.tensor([11, 12, 13, 14, 15]), torch.tensor([0, 3, 9, 1, 2])
    full, _, _ = sample(logits, 0.8, 20, 0.9, 0.0, seeds, offsets)
    for r in range(5):
        alone, _, _ = sample(logits[r : r + 1], 0.8, 20, 0.9, 0.0, seeds[r : r + 1], offsets[r : r + 1])
        assert alone.item() == full[r].item()


def test_top_k_one_is_greedy_and_ties_are_kept():
    logits = torch.tensor([[0.0, 2.0, 2.0, -1.0]])
    seen = {sample(logits, 1.0, top_k=1, seeds=0, offsets=i)[0].item() for i in range(64)}
    assert seen == {1, 2}  # both tied maxima survive top_k=1


@pytest.mark.parametrize("kwargs, match", [({"top_p": 0.0}, "top_p"), ({"min_p": 1.5}, "min_p"),
                                           ({"seeds": torch.zeros(3)}, "seeds must be")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample(torch.randn(2, 10), **kwargs)
