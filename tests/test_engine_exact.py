"""Exact on-policy logprobs: the engine's recorded raw logprobs equal the trainer's recomputation bitwise
(fp32, CPU)."""

import pytest
import torch

import vt_core.model as vt_model
from vt_core.data import pack_rl
from vt_core.data.packing import make_packed_batch
from vt_core.generation import Engine, SamplingParams, invariance_padding, score_completions
from vt_core.generation.exact import MIN_MATMUL_ROWS, per_document_attention
from vt_core.kernels import linear_logprobs

CONFIG = dict(model_type="qwen2", vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)
PROMPTS = [[5, 6, 7], list(range(10, 40)), [99], list(range(50, 67)), [3, 1, 4, 1, 5, 9, 2, 6]]


@pytest.fixture(scope="module")
def model():
    return vt_model.from_config(CONFIG, seed=0).eval()


@pytest.fixture(scope="module")
def rollout(model):
    params = [SamplingParams(temperature=1.0, top_p=0.9 if i % 2 else 1.0, max_new_tokens=9 + 4 * i, seed=i,
                             ignore_eos=True) for i in range(len(PROMPTS))]
    engine = Engine(model, eos_token_id=[], exact_logprobs=True, max_tokens_in_cache=160, block_size=4)
    out = engine.generate(PROMPTS, params, n=2)
    prompts = [p for p, group in zip(PROMPTS, out) for _ in group]
    comps = [c for group in out for c in group]
    return prompts, comps, engine


def _trainer_logprobs(model, prompts, comps, max_tokens=None, grad=False):
    """What vt_core.trainer.rl does (pack_rl, packed forward, linear_logprobs on [T], gather completions),
    with the per-document attention hook the exact mode asks the trainer to pass."""
    result = [None] * len(comps)
    for mb in pack_rl(prompts, [c.token_ids for c in comps], max_tokens):
        b = mb.batch
        assert invariance_padding(b.num_tokens) == 0  # the trainer-side precondition (module docstring)
        with torch.set_grad_enabled(grad):
            hidden = model(b.input_ids, b.position_ids, b.cu_seqlens, b.max_seqlen,
                           attention=per_document_attention(model, b.cu_seqlens))
            lp = linear_logprobs(hidden, model.lm_head_weight, b.targets.clamp(min=0))
        for i, values in zip(mb.sample_ids, mb.gather_tokens(lp.detach())):
            result[i] = values
    return result


def test_matmul_rows_do_not_depend_on_row_count():
    """The property the guarantee rests on, measured with this process' thread count."""
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(300, 64, generator=gen), torch.randn(211, 64, generator=gen)
    full = x @ w.T
    for rows in list(range(MIN_MATMUL_ROWS, 40)) + [127, 256]:
        for start in (0, 5, 31):
            assert torch.equal(x[start: start + rows] @ w.T, full[start: start + rows]), (rows, start)


@pytest.mark.parametrize("packing", ["in_order", "reversed", "ffd_small_batches", "with_grad"])
def test_engine_logprobs_equal_trainer_bitwise(model, rollout, packing):
    prompts, comps, _ = rollout
    order = list(range(len(comps)))
    if packing == "reversed":
        order = order[::-1]
    got = _trainer_logprobs(model, [prompts[i] for i in order], [comps[i] for i in order],
                            max_tokens=64 if packing == "ffd_small_batches" else None, grad=packing == "with_grad")
    for j, i in enumerate(order):
        assert torch.equal(got[j], torch.tensor(comps[i].logprobs, dtype=torch.float32)), (packing, i)


def test_rescoring_changes_values_only_slightly_and_keeps_tokens(model, rollout):
    prompts, comps, engine = rollout
    assert engine.stats["preemptions"] > 0  # the small cache forced recompute; exactness holds regardless
    diff = max(max(abs(a - b) for a, b in zip(c.logprobs, c.sampler_logprobs)) for c in comps)
    assert diff == engine.stats["rescore_max_abs_diff"] and diff < 1e-5
    plain = Engine(model, eos_token_id=[]).generate(
        PROMPTS[:2], [SamplingParams(temperature=1.0, max_new_tokens=9, seed=0, ignore_eos=True),
                      SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=13, seed=1, ignore_eos=True)], n=2)
    assert [c.token_ids for g in plain for c in g] == [c.token_ids for c in comps[:4]]
    assert all(c.sampler_logprobs is None for g in plain for c in g)


def test_score_completions_pads_small_batches_and_handles_empty(model):
    assert [invariance_padding(t) for t in (1, 11, 12, 512, 515, 524, 1024)] == [11, 1, 0, 0, 9, 0, 0]
    prompts, comps = [[7], [8, 9], [4, 4]], [[1, 2], [], [3]]
    scores = score_completions(model, prompts, comps)
    assert [s.numel() for s in scores] == [2, 0, 1]
    # the same pairs inside a big batch (no padding needed there) give the same bits
    filler = (list(range(1, 60)), [False] * 59)
    b = make_packed_batch([filler, ([7, 1, 2], [False, True, True]), ([4, 4, 3], [False, False, True])])
    hidden = model(b.input_ids, b.position_ids, b.cu_seqlens, b.max_seqlen,
                   attention=per_document_attention(model, b.cu_seqlens))
    lp = linear_logprobs(hidden, model.lm_head_weight, b.targets.clamp(min=0))
    assert torch.equal(scores[0], lp[59:61]) and torch.equal(scores[2], lp[63:64])
    with pytest.raises(ValueError, match="2 prompts but 1"):
        score_completions(model, [[1], [2]], [[3]])


@pytest.mark.parametrize("window", [None, 3])
def test_per_document_attention_is_packed_attention(window):
    from types import SimpleNamespace

    from vt_core.kernels import packed_attention

    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(23, h, 16, generator=gen, requires_grad=True) for h in (4, 2, 2))
    cu = torch.tensor([0, 5, 6, 17, 23], dtype=torch.int32)
    layer = SimpleNamespace(self_attn=SimpleNamespace(scale=0.3, window=window))
    hook = per_document_attention(SimpleNamespace(model=SimpleNamespace(layers=[layer])), cu)
    got = hook(0, q, k, v)
    want = packed_attention(q, k, v, cu, 11, causal=True, softmax_scale=0.3, window=window)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    got.sum().backward()  # differentiable: usable in the training forward
    assert q.grad is not None and bool(torch.isfinite(q.grad).all())
