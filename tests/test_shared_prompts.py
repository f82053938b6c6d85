"""Prompt sharing in RL training (vt_core.data.pack_rl_shared): the same per-token logprobs, loss and gradients
as the unshared packing, with each group's prompt computed once."""

import random

import pytest
import torch

from vt_core import model as vt_model
from vt_core.data import pack_rl, pack_rl_shared, shared_prompt_attention, tiny_model_config_path
from vt_core.kernels import RLLossConfig, linear_logprobs, linear_rl_loss


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return vt_model.from_config(tiny_model_config_path(), seed=3)


def _pairs(seed=0):
    """Groups of 1-4 completions (lengths 0-9) of prompts of 1-30 tokens, interleaved as a trainer sees them."""
    rng = random.Random(seed)
    prompts, comps = [], []
    for g in range(6):
        p = [rng.randrange(3, 1024) for _ in range(rng.choice([1, 2, 7, 30]) if g else 1)]
        for _ in range(rng.randint(1, 4)):
            prompts.append(p)
            comps.append([rng.randrange(3, 1024) for _ in range(rng.randint(0 if g else 1, 9))])
    order = list(range(len(prompts)))
    rng.shuffle(order)
    return [prompts[i] for i in order], [comps[i] for i in order]


def _per_pair(model, micro, attention_of=None):
    """{pair index: that completion's logprobs} over all micro-batches."""
    out = {}
    for mb in micro:
        b = mb.batch
        hook = attention_of(model, mb) if attention_of else None
        hidden = model(b.input_ids, b.position_ids, b.cu_seqlens, b.max_seqlen, attention=hook)
        lp = linear_logprobs(hidden, model.lm_head_weight, b.targets.clamp(min=0))
        out.update(zip(mb.sample_ids, mb.gather_tokens(lp)))
    return out


@pytest.mark.parametrize("max_tokens", [None, 40])
def test_shared_packing_gives_the_unshared_logprobs(model, max_tokens):
    prompts, comps = _pairs()
    with torch.no_grad():
        ref = _per_pair(model, pack_rl(prompts, comps, max_tokens))
        micro = pack_rl_shared(prompts, comps, max_tokens)
        got = _per_pair(model, micro, shared_prompt_attention)
    assert sorted(got) == sorted(ref) == list(range(len(prompts)))
    for i in ref:
        assert got[i].shape == (len(comps[i]),)
        torch.testing.assert_close(got[i], ref[i], rtol=1e-5, atol=1e-5)
    n_shared = sum(mb.batch.num_tokens for mb in micro)
    n_plain = sum(len(p) + len(c) for p, c in zip(prompts, comps))
    assert n_shared < n_plain
    if max_tokens is None:  # each distinct prompt once: (L - 1) + sum(1 + |c|) per group
        groups = {tuple(p) for p in prompts}
        assert n_shared == sum(len(g) - 1 for g in groups) + sum(1 + len(c) for c in comps)
    else:
        assert len(micro) > 1 and all(mb.batch.num_tokens <= max_tokens for mb in micro)


def test_shared_packing_caps_the_group_width(model):
    """max_group_tokens bounds a sub-group (its dense mask's width) without changing any logprob."""
    prompts, comps = _pairs(3)
    with torch.no_grad():
        ref = _per_pair(model, pack_rl(prompts, comps))
        micro = pack_rl_shared(prompts, comps, max_group_tokens=40)
        got = _per_pair(model, micro, shared_prompt_attention)
    longest_pair = max(len(p) + len(c) for p, c in zip(prompts, comps))
    assert all(mb.batch.max_seqlen <= max(40, longest_pair) for mb in micro)
    assert len(micro) == 1 and sum(p < 0 for p in micro[0].parents) > len({tuple(p) for p in prompts})
    for i in ref:
        torch.testing.assert_close(got[i], ref[i], rtol=1e-5, atol=1e-5)


def test_shared_packing_honours_sliding_windows(model):
    prompts, comps = _pairs(1)
    layer = model.model.layers[1].self_attn
    layer.window = 4
    try:
        with torch.no_grad():
            ref = _per_pair(model, pack_rl(prompts, comps))
            got = _per_pair(model, pack_rl_shared(prompts, comps), shared_prompt_attention)
    finally:
        layer.window = None
    for i in ref:
        torch.testing.assert_close(got[i], ref[i], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"])
def test_shared_packing_gives_the_unshared_loss_and_gradients(model, aggregation):
    prompts, comps = _pairs(2)
    keep = [i for i, c in enumerate(comps) if c]
    prompts, comps = [prompts[i] for i in keep], [comps[i] for i in keep]
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(len(prompts), generator=g)
    sampler = [torch.randn(len(c), generator=g) * 0.1 - 5 for c in comps]
    cfg = RLLossConfig(aggregation=aggregation, beta=0.0)

    def loss_and_grads(micro, attention_of=None):
        model.zero_grad()
        (mb,) = micro
        b = mb.batch
        hook = attention_of(model, mb) if attention_of else None
        hidden = model(b.input_ids, b.position_ids, b.cu_seqlens, b.max_seqlen, attention=hook)
        loss, met = linear_rl_loss(hidden, model.lm_head_weight, b.targets, mb.scatter_samples(adv), b.loss_mask,
                                   b.cu_seqlens, rollout_logprobs=mb.scatter_tokens(sampler), config=cfg)
        loss.backward()
        return loss.detach(), met, {n: p.grad.clone() for n, p in model.named_parameters()}

    loss_ref, met_ref, grads_ref = loss_and_grads(pack_rl(prompts, comps))
    loss, met, grads = loss_and_grads(pack_rl_shared(prompts, comps), shared_prompt_attention)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    for k in met_ref:
        torch.testing.assert_close(torch.as_tensor(met[k]), torch.as_tensor(met_ref[k]), rtol=1e-4, atol=1e-5)
    for n in grads_ref:
        torch.testing.assert_close(grads[n], grads_ref[n], rtol=1e-4, atol=1e-6, msg=n)


def test_shared_packing_bad_input_is_named(model):
    with pytest.raises(ValueError, match="pair 1 has 3 prompt \\+ 9 completion tokens, more than max_tokens=8"):
        pack_rl_shared([[5, 6, 7], [5, 6, 7]], [[1], [1] * 9], 8)
    micro = pack_rl_shared([[5, 6, 7], [5, 6, 7]], [[1], [1] * 9], 8, overflow="truncate")
    assert sorted(n for mb in micro for n in mb.completion_lens) == [1, 5]  # 2 trunk + 1 + 5 = 8
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        pack_rl_shared([[]], [[1]])
    with pytest.raises(ValueError, match="parents is None"):
        shared_prompt_attention(model, pack_rl([[5]], [[1]])[0])
