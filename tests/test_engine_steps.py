"""Generation engine step machinery: read-back lag (no per-token host sync), bucketed padded decode steps and
their CUDA graphs. The logic runs on CPU (same results whatever the lag or padding); graph capture on a GPU."""

import pytest
import torch

import vt_core.model as vt_model
from vt_core.generation import Engine, SamplingParams
from vt_core.generation.graphs import default_buckets

CONFIG = dict(model_type="qwen2", vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)
PROMPTS = [[5, 6, 7, 8, 9], [11, 12], list(range(20, 47)), [42], list(range(60, 73))]


class _CharTokenizer:
    eos_token_id = None

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(ord("a") + i % 26) for i in ids)


@pytest.fixture(scope="module")
def model():
    return vt_model.from_config(CONFIG, seed=0).eval()


def _params():
    """Greedy, plain, truncated rows, a stop id, a stop string and different lengths in one batch."""
    return [SamplingParams(temperature=0.0, max_new_tokens=14),
            SamplingParams(temperature=1.0, max_new_tokens=23, seed=3, stop_token_ids=(7, 19, 33)),
            SamplingParams(temperature=0.8, top_p=0.9, top_k=20, max_new_tokens=17, seed=4, stop=("ab", "q")),
            SamplingParams(temperature=1.2, min_p=0.05, max_new_tokens=1, seed=5),
            SamplingParams(temperature=1.0, max_new_tokens=29, seed=6, stop=("zz",))]


def _assert_same(a, b):
    for ga, gb in zip(a, b):
        for ca, cb in zip(ga, gb):
            assert ca.token_ids == cb.token_ids and ca.finish_reason == cb.finish_reason and ca.text == cb.text
            assert len(ca.logprobs) == len(ca.token_ids) == len(ca.processed_logprobs)
            torch.testing.assert_close(torch.tensor(ca.logprobs), torch.tensor(cb.logprobs), rtol=0, atol=1e-5)
            torch.testing.assert_close(torch.tensor(ca.processed_logprobs), torch.tensor(cb.processed_logprobs),
                                       rtol=0, atol=1e-5)


@pytest.mark.parametrize("cache_tokens, block_size", [(4096, 16), (96, 4)])
def test_read_back_lag_changes_nothing(model, cache_tokens, block_size):
    """Tokens read back one launch late (the CUDA default): samples that stop are found a step late and their
    extra draw is dropped; results equal reading every token at once, with and without preemption."""
    runs, seen = {}, {}
    for lag in (0, 1, 3):
        engine = Engine(model, tokenizer=_CharTokenizer(), eos_token_id=[], max_tokens_in_cache=cache_tokens,
                        block_size=block_size, readback_lag=lag)
        seen[lag] = []
        runs[lag] = engine.generate(PROMPTS, _params(), n=2, on_finish=lambda p, j, c: seen[lag].append((p, j)))
        assert engine.cache.allocator.num_free == engine.num_blocks and not engine._draws
        if cache_tokens == 96:
            assert engine.stats["preemptions"] > 0
    reasons = {c.finish_reason for g in runs[0] for c in g}
    assert reasons == {"stop", "length"}
    for lag in (1, 3):
        _assert_same(runs[0], runs[lag])
        assert sorted(seen[lag]) == sorted(seen[0]) and len(seen[lag]) == 2 * len(PROMPTS)


def test_padded_bucketed_steps_give_the_same_tokens(model):
    """Decode steps padded up to their batch-size bucket (what the CUDA graphs replay) equal unpadded steps."""
    want = Engine(model, tokenizer=_CharTokenizer(), eos_token_id=[], decode_attention="paged").generate(
        PROMPTS, _params(), n=2)
    engine = Engine(model, tokenizer=_CharTokenizer(), eos_token_id=[], max_batch_size=6, batch_buckets=(1, 4, 8),
                    max_tokens_in_cache=64, block_size=4)
    got = engine.generate(PROMPTS, _params(), n=2)
    _assert_same(want, got)
    assert engine.decode_attention == "paged" and not engine.cuda_graphs and engine.bucketed is not None
    assert engine.stats["preemptions"] > 0  # padded steps also survive preemption and resume


def test_bucket_choice_and_options(model):
    assert default_buckets(256) == (1, 2, 4, 8, 16, 32, 64, 128, 256)
    assert default_buckets(48) == (1, 2, 4, 8, 16, 32, 48)
    engine = Engine(model, eos_token_id=[], max_batch_size=8, batch_buckets=(2, 8))
    engine.generate([[1, 2]], SamplingParams(max_new_tokens=2))
    assert [engine.bucketed.bucket_for(b) for b in (1, 2, 3, 8)] == [2, 2, 8, 8]
    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        engine.bucketed.bucket_for(9)
    with pytest.raises(ValueError, match="cuda_graphs needs"):
        Engine(model, cuda_graphs=True)
    with pytest.raises(ValueError, match="max_batch_size"):
        Engine(model, max_batch_size=16, batch_buckets=(1, 8))
    with pytest.raises(ValueError, match="paged"):
        Engine(model, batch_buckets=(256,), decode_attention="contiguous")
    with pytest.raises(ValueError, match="readback_lag"):
        Engine(model, readback_lag=-1)
    cpu = Engine(model)
    assert cpu.readback_lag == 0 and not cpu.cuda_graphs and cpu.batch_buckets is None


@pytest.mark.gpu
def test_cuda_graph_decode_equals_eager():
    """On CUDA: graph-replayed bucketed steps (the default) give the eager paged path's tokens, greedy and seeded."""
    model = vt_model.from_config(CONFIG, seed=0, device="cuda").eval()
    eager = Engine(model, tokenizer=_CharTokenizer(), eos_token_id=[], cuda_graphs=False, max_batch_size=16)
    graphs = Engine(model, tokenizer=_CharTokenizer(), eos_token_id=[], max_batch_size=16)
    assert graphs.cuda_graphs and graphs.readback_lag == 1 and eager.batch_buckets is None
    want = eager.generate(PROMPTS, _params(), n=2)
    got = graphs.generate(PROMPTS, _params(), n=2)
    assert graphs.bucketed.captured >= 2  # batches of 10 samples shrinking as they finish: several buckets
    _assert_same(want, got)
    again = graphs.generate(PROMPTS, _params(), n=2)  # replays the captured graphs
    _assert_same(want, again)
    graphs.free_cache()
    assert graphs.bucketed is None


def test_prevalidated_sample_is_sample():
    """The engine's device-side sampler (no argument checks, no host read-back) is ``sample`` itself."""
    from vt_core.kernels import sample
    from vt_core.kernels.sampling import sample_prevalidated

    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(6, 301, generator=gen) * 2
    cols = dict(temperature=torch.tensor([0.0, 1.0, 0.7, 1.3, 1.0, 0.9]), top_k=torch.tensor([0, 0, 12, 0, 40, 5]),
                top_p=torch.tensor([1.0, 1.0, 0.9, 0.8, 1.0, 1.0]), min_p=torch.tensor([0.0, 0.1, 0.0, 0.0, 0.05, 0.0]),
                seeds=torch.arange(6) + 11, offsets=torch.tensor([0, 4, 2, 9, 1, 3]))
    got = sample_prevalidated(logits, *cols.values())
    for g, w in zip(got, sample(logits, **cols)):
        assert torch.equal(g, w)
