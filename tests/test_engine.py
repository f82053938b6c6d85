"""Generation engine: greedy equality with transformers, preemption, n > 1, seeding, stops."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

import vt_core.model as vt_model
from vt_core.generation import Engine, SamplingParams


def _tiny(kind):
    common = dict(vocab_size=101, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256)
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=True, **common)).eval()
    return LlamaForCausalLM(LlamaConfig(tie_word_embeddings=False, **common)).eval()


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def pair(request, tmp_path_factory):
    torch.manual_seed(0)
    hf = _tiny(request.param)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return hf, vt_model.load(path).eval()


PROMPTS = [[1, 2, 3, 4, 5], [7, 8], list(range(9, 31)), [42]]


def _hf_greedy(hf, prompt, new):
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("cache_tokens, block_size, decode_attention",
                         [(4096, 16, "contiguous"), (48, 4, "contiguous"), (48, 4, "paged"), (4096, None, "auto"),
                          (48, 4, "native"), (60, 5, "native")])
def test_greedy_equals_transformers(pair, cache_tokens, block_size, decode_attention):
    hf, model = pair
    engine = Engine(model, max_tokens_in_cache=cache_tokens, block_size=block_size, eos_token_id=[],
                    decode_attention=decode_attention)
    if decode_attention == "auto":  # an fp32 CPU model: the C++ kernel, in 64-token blocks
        assert engine.decode_attention == "native" and engine.block_size == 64
    out = engine.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=16), n=2)
    for prompt, group in zip(PROMPTS, out):
        want = _hf_greedy(hf, prompt, 16)
        assert [c.token_ids for c in group] == [want, want]
        assert all(c.finish_reason == "length" and len(c.logprobs) == 16 for c in group)
    if cache_tokens < 64:
        assert engine.stats["preemptions"] > 0  # the small cache forced preemption and recompute
    assert engine.cache.allocator.num_free == engine.num_blocks  # every block came back


def test_raw_logprobs_match_a_full_forward(pair):
    _, model = pair
    engine = Engine(model, eos_token_id=[])
    (group,) = engine.generate([PROMPTS[0]], SamplingParams(temperature=1.0, top_k=10, max_new_tokens=12, seed=1), n=3)
    for c in group:
        toks = PROMPTS[0] + c.token_ids
        hidden = model(torch.tensor(toks), torch.arange(len(toks)), torch.tensor([0, len(toks)], dtype=torch.int32))
        lp = torch.log_softmax(model.logits(hidden), -1)[len(PROMPTS[0]) - 1 : -1]
        want = lp.gather(-1, torch.tensor(c.token_ids)[:, None]).squeeze(-1)
        torch.testing.assert_close(torch.tensor(c.logprobs), want, rtol=0, atol=1e-5)
        assert all(p >= r - 1e-6 for p, r in zip(c.processed_logprobs, c.logprobs))  # truncation only adds mass


def test_seeded_sampling_ignores_batch_composition(pair):
    _, model = pair
    params = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=10, seed=1234)
    alone = Engine(model, eos_token_id=[]).generate([PROMPTS[2]], params, n=2)[0]
    others = SamplingParams(temperature=1.0, max_new_tokens=7, seed=5)
    mixed = Engine(model, max_tokens_in_cache=64, block_size=4, eos_token_id=[]).generate(
        [PROMPTS[0], PROMPTS[2], PROMPTS[1]], [others, params, others], n=2)[1]
    assert [c.token_ids for c in alone] == [c.token_ids for c in mixed]
    assert alone[0].token_ids != alone[1].token_ids  # the two samples use different streams


class _CharTokenizer:
    eos_token_id = None

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(ord("a") + i % 26) for i in ids)


def test_stop_ids_stop_strings_and_max_new_tokens(pair):
    _, model = pair
    engine = Engine(model, tokenizer=_CharTokenizer(), eos_token_id=[])
    free = engine.generate([PROMPTS[0]], SamplingParams(temperature=0.0, max_new_tokens=12))[0][0].token_ids
    stop_tok = free[5]
    first = free.index(stop_tok)
    params = SamplingParams(temperature=0.0, max_new_tokens=12, stop_token_ids=(stop_tok,))
    c = engine.generate([PROMPTS[0]], params)[0][0]
    assert c.token_ids == free[: first + 1] and c.finish_reason == "stop"
    text = _CharTokenizer().decode(free)
    stop = text[6:8]
    c = engine.generate([PROMPTS[0]], SamplingParams(temperature=0.0, max_new_tokens=12, stop=(stop,)))[0][0]
    end = text.index(stop) + len(stop)
    assert c.token_ids == free[:end] and c.finish_reason == "stop" and c.text == text[:end]
    c = engine.generate([PROMPTS[0]], SamplingParams(temperature=0.0, max_new_tokens=3))[0][0]
    assert c.token_ids == free[:3] and c.finish_reason == "length"
    eos_engine = Engine(model, eos_token_id=stop_tok)
    c = eos_engine.generate([PROMPTS[0]], SamplingParams(temperature=0.0, max_new_tokens=12))[0][0]
    assert c.token_ids == free[: first + 1] and c.finish_reason == "stop"
    c = eos_engine.generate([PROMPTS[0]], SamplingParams(temperature=0.0, max_new_tokens=12, ignore_eos=True))[0][0]
    assert c.token_ids == free


def test_bad_requests_are_named(pair):
    _, model = pair
    engine = Engine(model, max_tokens_in_cache=32, eos_token_id=[])
    short = SamplingParams(max_new_tokens=4)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine.generate([[1], []], short)
    with pytest.raises(ValueError, match="outside"):
        engine.generate([[1, 5000]], short)
    with pytest.raises(ValueError, match="exceeds the KV cache"):
        engine.generate([[1, 2]], SamplingParams(max_new_tokens=100))  # the cache rounds 32 up to one 64-block
    with pytest.raises(ValueError, match="stop strings need"):
        engine.generate([[1, 2]], SamplingParams(max_new_tokens=4, stop=("x",)))
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)


def test_cache_is_freed_and_reallocated(pair):
    _, model = pair
    engine = Engine(model, max_tokens_in_cache=64, eos_token_id=[])
    a = engine.generate([PROMPTS[0]], SamplingParams(temperature=0.0, max_new_tokens=4))
    engine.free_cache()
    assert engine.cache is None
    b = engine.generate([PROMPTS[0]], SamplingParams(temperature=0.0, max_new_tokens=4))
    assert a[0][0].token_ids == b[0][0].token_ids


def test_row_routed_sampler_equals_the_reference_bitwise():
    from vt_core.generation.sampler import sample_rows, uniforms_ahead
    from vt_core.kernels import sample

    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(9, 1031, generator=gen) * 3
    params = [SamplingParams(temperature=t, top_k=k, top_p=p, min_p=m) for t, k, p, m in [
        (1.0, 0, 1.0, 0.0), (0.0, 5, 0.9, 0.0), (0.7, 0, 1.0, 0.1), (1.3, 40, 1.0, 0.0), (1.0, 0, 0.8, 0.0),
        (0.5, 2000, 1.0, 0.0), (1.0, 0, 1.0, 0.0), (0.0, 0, 1.0, 0.0), (0.9, 10, 0.7, 0.05)]]
    seeds, offsets = list(range(100, 109)), [0, 3, 7, 1, 2, 9, 4, 0, 5]
    got = sample_rows(logits, params, seeds, offsets)
    want = sample(logits, temperature=torch.tensor([p.temperature for p in params]),
                  top_k=torch.tensor([p.top_k for p in params]), top_p=torch.tensor([p.top_p for p in params]),
                  min_p=torch.tensor([p.min_p for p in params]), seeds=torch.tensor(seeds),
                  offsets=torch.tensor(offsets))
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    plain = [0, 2, 5, 6]  # a batch of only untruncated rows takes the sort-free path for the whole batch
    got = sample_rows(logits[plain], [params[i] for i in plain], [seeds[i] for i in plain], [offsets[i] for i in plain])
    for g, w in zip(got, want):
        assert torch.equal(g, w[plain])
    # uniforms buffered ahead (as the engine does) are the ones sample draws at those offsets
    starts = [max(offsets[i] - 2, 0) for i in plain]
    ahead = uniforms_ahead([seeds[i] for i in plain], starts, 5)
    got = sample_rows(logits[plain], [params[i] for i in plain], [seeds[i] for i in plain],
                      [offsets[i] for i in plain], [row[offsets[i] - st] for row, i, st in zip(ahead, plain, starts)])
    for g, w in zip(got, want):
        assert torch.equal(g, w[plain])


@pytest.mark.parametrize("max_batch", [9, 256])
def test_contiguous_decode_mirror_and_native_equal_paged_attention(pair, max_batch):
    """Samples finishing one after another (mirror rows left in place, then compacted), late-admitted
    prompts (rebuild, max_batch 9) and growth past the mirror's capacity give the paged path's results; so
    does the C++ kernel (prefill and decode) on the same block tables."""
    _, model = pair
    prompts = [list(range(3, 3 + k)) for k in (5, 9, 2, 30, 14, 7)]
    params = [SamplingParams(temperature=0.8, max_new_tokens=m, seed=k, ignore_eos=True)
              for k, m in enumerate((3, 58, 6, 11, 9, 57))]
    runs = {}
    for mode in ("paged", "contiguous", "native"):
        engine = Engine(model, eos_token_id=[], max_batch_size=max_batch, decode_attention=mode, block_size=16)
        runs[mode] = engine.generate(prompts, params, n=2)
        assert engine.workspace is None  # the mirror is dropped when generate returns
    for other in ("contiguous", "native"):
        for g_paged, g_other in zip(runs["paged"], runs[other]):
            for a, b in zip(g_paged, g_other):
                assert a.token_ids == b.token_ids
                torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="decode_attention"):
        Engine(model, decode_attention="flash")


def test_on_finish_reports_each_sample_once_as_it_finishes(pair):
    _, model = pair
    seen = []

    def record(p, j, completion):
        seen.append((p, j, completion.finish_reason, list(completion.token_ids), completion.text))

    engine = Engine(model, tokenizer=_CharTokenizer(), eos_token_id=[])
    params = [SamplingParams(temperature=1.0, max_new_tokens=m, seed=s) for m, s in ((3, 1), (9, 2))]
    out = engine.generate([PROMPTS[0], PROMPTS[1]], params, n=2, on_finish=record)
    assert sorted((p, j) for p, j, *_ in seen) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [p for p, *_ in seen[:2]] == [0, 0]  # the 3-token request finishes first, mid-generation
    for p, j, reason, ids, text in seen:
        assert reason == "length" and ids == out[p][j].token_ids and text == out[p][j].text


def test_compiled_native_decode_equals_eager_and_sees_weight_updates(tmp_path):
    """The native CPU decode step, eager and compiled (compile_decode=True), draws the torch reference's tokens,
    and an in-place weight update (what an optimizer step does) reaches the compiled step."""
    torch.manual_seed(0)  # head_dim 32: the C++ kernel's AVX2 path where the CPU has it
    Qwen2ForCausalLM(Qwen2Config(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                                 tie_word_embeddings=True)).save_pretrained(tmp_path)
    model = vt_model.load(tmp_path).eval()
    prompts = [list(range(3, 3 + k)) for k in (5, 9, 2, 90)]  # 90: a two-block table (blocks of 64)
    params = [SamplingParams(temperature=0.8, max_new_tokens=m, seed=k, ignore_eos=True)
              for k, m in enumerate((12, 3, 20, 7))]
    compiled = Engine(model, eos_token_id=[], compile_decode=True)
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    seen = []
    for update in range(2):
        want = Engine(model, eos_token_id=[], decode_attention="paged").generate(prompts, params)
        eager = Engine(model, eos_token_id=[]).generate(prompts, params)
        seen.append([c.token_ids for group in want for c in group])
        assert [c.token_ids for group in eager for c in group] == seen[-1]
        got = compiled.generate(prompts, params)
        assert compiled.cpu_decode.compiled
        for g_want, g_got in zip(want, got):
            for a, b in zip(g_want, g_got):
                assert a.token_ids == b.token_ids
                torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), rtol=0, atol=1e-5)
        with torch.no_grad():  # an in-place update, as the optimizer makes
            model.model.layers[0].mlp.down_proj.weight.mul_(-3.0)
    assert seen[0] != seen[1]  # the update changed what the model generates
    # Batches of one and one-block tables were padded, so one graph served every step.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs_before + 1
    with pytest.raises(ValueError, match="compile_decode"):
        Engine(model, decode_attention="contiguous", compile_decode=True)
