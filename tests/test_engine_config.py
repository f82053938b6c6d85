"""Engine construction from an EngineConfig (the same as keyword arguments), its validation, and the roles the
engine is split into: one runner per decode attention chosen at construction, typed sample states."""

import dataclasses

import pytest

import vt_core.model as vt_model
from vt_core.generation import Engine, EngineConfig, SamplingParams
from vt_core.generation.runners import ContiguousRunner, NativeRunner, PagedRunner
from vt_core.generation.sequence import SeqState

CONFIG = dict(model_type="qwen2", vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)
PROMPTS = [[5, 6, 7, 8, 9], [11, 12], list(range(20, 47))]


@pytest.fixture(scope="module")
def model():
    return vt_model.from_config(CONFIG, seed=0).eval()


def _tokens(out):
    return [[c.token_ids for c in group] for group in out]


def test_config_equals_keywords_and_keywords_override_it(model):
    params = SamplingParams(temperature=1.0, max_new_tokens=9, seed=2)
    options = dict(max_tokens_in_cache=40, block_size=4, eos_token_id=[], decode_attention="paged")
    by_keywords = Engine(model, **options)
    by_config = Engine(model, config=EngineConfig(**options))
    assert by_config.config == by_keywords.config
    assert _tokens(by_config.generate(PROMPTS, params, n=2)) == _tokens(by_keywords.generate(PROMPTS, params, n=2))
    assert by_config.stats["preemptions"] > 0  # 40 cache tokens: preempted and resumed, same tokens
    mixed = Engine(model, config=EngineConfig(**options), decode_attention="contiguous", block_size=8)
    assert (mixed.decode_attention, mixed.block_size, mixed.config.max_tokens_in_cache) == ("contiguous", 8, 40)
    assert {f.name for f in dataclasses.fields(EngineConfig)} >= set(options) | {"readback_lag", "compile_decode"}


def test_runner_is_chosen_once_from_the_resolved_config(model):
    auto = Engine(model)  # an fp32 CPU model: the native C++ kernel, 64-token blocks, no read-back lag
    assert type(auto.runner) is NativeRunner and auto.config.decode_attention == "native"
    assert (auto.config.block_size, auto.config.readback_lag, auto.config.cuda_graphs) == (64, 0, False)
    assert type(Engine(model, decode_attention="contiguous").runner) is ContiguousRunner
    assert type(Engine(model, decode_attention="paged").runner) is PagedRunner


def test_config_errors_name_the_choices():
    with pytest.raises(ValueError, match="'auto', 'paged', 'native', 'contiguous'"):
        EngineConfig(decode_attention="flash")
    with pytest.raises(ValueError, match="not both"):
        EngineConfig(max_tokens_in_cache=64, kv_budget_bytes=1 << 20)
    with pytest.raises(ValueError, match="block_size"):
        EngineConfig(block_size=0)
    with pytest.raises(TypeError):
        Engine(None, max_tokens=64)  # an unknown option is an error, as a misspelt keyword always was


def test_step_runs_schedule_run_postprocess_to_the_end(model):
    """generate is step() until nothing waits, runs or is unread; every sample ends DONE with its blocks back."""
    engine = Engine(model, eos_token_id=[], max_batch_size=2)
    seen = []
    out = engine.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=5), n=1,
                          on_finish=lambda p, j, c: seen.append(p))
    assert sorted(seen) == [0, 1, 2] and all(len(g[0].token_ids) == 5 for g in out)
    assert engine.scheduler is None and not engine.readback.pending
    assert engine.cache.allocator.num_free == engine.num_blocks
    assert [s.value for s in SeqState] == ["waiting", "running", "drawn", "done"]
