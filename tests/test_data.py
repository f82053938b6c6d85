"""vt_core.data: sources, chat/prompt-completion masks, FFD packing, RL pair packing, the embedded tiny assets."""

import json
import random
import shutil

import pytest
import torch

from vt_core.assets import make_tiny
from vt_core.data import (
    DataError,
    PackedBatch,
    TokenizedExample,
    check_token_ids,
    check_vocab,
    first_fit_decreasing,
    iter_records,
    load_examples,
    load_tokenizer,
    make_packed_batch,
    pack_examples,
    pack_rl,
    read_rows,
    tiny_model_config_path,
    tiny_tokenizer_path,
    tokenize_messages,
    tokenize_prompt_completion,
    tokenize_row,
)

ROWS = [
    {"messages": [{"role": "user", "content": "add 2 and 3"}, {"role": "assistant", "content": "5"}], "id": 1},
    {
        "messages": [{"role": "user", "content": "def f"}, {"role": "assistant", "content": "def f():\n    pass"}],
        "id": 2,
    },
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "id": 3},
]
CHAT = [
    {"role": "system", "content": "You write Python."},
    {"role": "user", "content": "Write f(x) = 3x + 1."},
    {"role": "assistant", "content": "def f(x):\n    return 3 * x + 1"},
    {"role": "user", "content": "Now  g, with trailing spaces"},
    {"role": "assistant", "content": "def g(x):\n    return x  \n"},
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(tiny_tokenizer_path())


def _write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------- sources


def test_every_source_format_yields_the_rows(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = _write_jsonl(tmp_path / "a.jsonl", [json.dumps(r) for r in ROWS[:2]] + ["", json.dumps(ROWS[2])])
    array = tmp_path / "b.json"
    array.write_text(json.dumps(ROWS), encoding="utf-8")
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), parquet, row_group_size=2)
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(saved))
    saved_dict = tmp_path / "saved_dict"
    splits = {"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS[:1])}
    datasets.DatasetDict(splits).save_to_disk(str(saved_dict))
    folder = tmp_path / "folder"
    folder.mkdir()
    _write_jsonl(folder / "1.jsonl", [json.dumps(ROWS[0])])
    pq.write_table(pa.Table.from_pylist(ROWS[1:]), folder / "2.parquet")

    for source in (jsonl, array, parquet, saved, saved_dict, folder):
        assert list(read_rows(source, fields={"messages": list, "id": int})) == ROWS, source
    assert list(read_rows(saved_dict, split="test")) == ROWS[:1]
    assert [r.row for r in iter_records(jsonl)] == [1, 2, 4]  # JSONL rows are line numbers (blank line 3)
    assert [r.row for r in iter_records(parquet)] == [1, 2, 3]  # across row groups
    one, two = str(folder / "1.jsonl"), str(folder / "2.parquet")
    assert [(r.source, r.row) for r in iter_records(folder)] == [(one, 1), (two, 1), (two, 2)]
    with pytest.raises(DataError, match=r"no split 'dev'; splits are \['test', 'train'\]"):
        list(read_rows(saved_dict, split="dev"))


def test_malformed_rows_name_file_row_and_field(tmp_path, tok):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = json.dumps(ROWS[0])
    bad_json = _write_jsonl(tmp_path / "bad.jsonl", [good, "", '{"messages": [}'])
    with pytest.raises(DataError) as e:
        list(read_rows(bad_json))
    assert str(e.value).startswith(f"{bad_json}, row 3: invalid JSON at column")
    not_obj = _write_jsonl(tmp_path / "list.jsonl", [good, "[1, 2]"])
    with pytest.raises(DataError, match=r"list\.jsonl, row 2: expected a JSON object, got list"):
        list(read_rows(not_obj))

    missing = _write_jsonl(tmp_path / "missing.jsonl", [good, json.dumps({"id": 7})])
    with pytest.raises(DataError, match=r"missing\.jsonl, row 2, field 'messages': missing field \(fields present: id"):
        list(read_rows(missing, fields={"messages": list}))
    with pytest.raises(DataError, match=r"missing\.jsonl, row 2, field 'messages': missing field: a row needs"):
        load_examples(missing, tok)

    wrong = _write_jsonl(tmp_path / "wrong.jsonl", [good, json.dumps({"messages": "hi", "id": True})])
    with pytest.raises(DataError, match=r"wrong\.jsonl, row 2, field 'messages': expected list, got str"):
        list(read_rows(wrong, fields={"messages": list}))
    with pytest.raises(DataError, match=r"row 2, field 'id': expected int, got bool"):
        list(read_rows(wrong, fields={"id": int}))

    bad_msg = _write_jsonl(tmp_path / "msg.jsonl", [json.dumps({"messages": [{"role": "user", "content": 3}]})])
    with pytest.raises(DataError, match=r"msg\.jsonl, row 1, field 'messages\[0\]\.content': expected str, got int"):
        load_examples(bad_msg, tok)
    half = _write_jsonl(tmp_path / "half.jsonl", [json.dumps({"prompt": "x"})])
    with pytest.raises(DataError, match=r"half\.jsonl, row 1, field 'completion': missing field"):
        load_examples(half, tok)

    parquet = tmp_path / "nulls.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "a", "completion": "b"}, {"prompt": None, "completion": "c"}]),
                   parquet)
    with pytest.raises(DataError, match=r"nulls\.parquet, row 2, field 'prompt': expected str, got NoneType"):
        list(read_rows(parquet, fields={"prompt": str}))
    saved = tmp_path / "saved"
    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": None}]
    datasets.Dataset.from_list(rows).save_to_disk(str(saved))
    with pytest.raises(DataError, match=r"saved, row 2, field 'completion': expected str"):
        load_examples(saved, tok)


# ---------------------------------------------------------------- tokenization


def _decode_where(tok, ex, want):
    return tok.decode([t for t, m in zip(ex.input_ids, ex.loss_mask) if m == want])


def test_chat_mask_is_assistant_only(tok):
    ex = tokenize_messages(tok, CHAT)
    assert ex.input_ids == tok.apply_chat_template(CHAT, tokenize=True, return_dict=True)["input_ids"]
    trained = _decode_where(tok, ex, True)
    assert trained == "def f(x):\n    return 3 * x + 1<|im_end|>def g(x):\n    return x  \n<|im_end|>"
    assert "You write Python." in _decode_where(tok, ex, False) and "Write f(x)" in _decode_where(tok, ex, False)
    # The mask equals what transformers derives from {% generation %} tags on the same ChatML layout.
    tagged = (
        "{%- for m in messages %}{%- if m['role'] == 'assistant' %}"
        "{{- '<|im_start|>assistant\\n' }}"
        "{% generation %}{{- m['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
        "{%- else %}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )
    ref = tok.apply_chat_template(
        CHAT, chat_template=tagged, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert ref["input_ids"] == ex.input_ids
    assert [bool(m) for m in ref["assistant_masks"]] == ex.loss_mask


def test_chat_template_that_rewrites_earlier_turns_is_refused(tok):
    old = tok.chat_template
    tok.chat_template = (
        "{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' }}"
        "{%- if loop.last %}{{- m['content'] }}{%- else %}{{- m['content'][:2] }}{%- endif %}"
        "{{- '<|im_end|>\\n' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )
    try:
        with pytest.raises(ValueError, match="renders turn 2 differently"):
            tokenize_messages(tok, CHAT)
    finally:
        tok.chat_template = old


def test_prompt_completion_masks(tok):
    ex = tokenize_prompt_completion(tok, "f(3) = ", "10")
    assert _decode_where(tok, ex, True) == "10<|im_end|>" and _decode_where(tok, ex, False) == "f(3) = "
    no_eos = tokenize_prompt_completion(tok, "f(3) = ", "10", add_eos=False)
    assert no_eos.input_ids == ex.input_ids[:-1]
    conv = tokenize_row(tok, {"prompt": CHAT[:2], "completion": CHAT[2:3]})
    assert _decode_where(tok, conv, True) == "def f(x):\n    return 3 * x + 1<|im_end|>"
    assert conv.input_ids == tokenize_messages(tok, CHAT[:3]).input_ids
    with pytest.raises(ValueError, match="field 'completion': expected str"):
        tokenize_row(tok, {"prompt": "a", "completion": 3})


def test_vocab_checks(tok):
    config = json.loads(tiny_model_config_path().read_text())
    check_vocab(tok, config["vocab_size"])
    msg = r"tokenizer/model vocab mismatch: the tokenizer emits token ids up to 999, but the model has vocab_size=512"
    with pytest.raises(ValueError, match=msg):
        check_vocab(tok, 512)
    check_token_ids(torch.tensor([0, 5, 1023]), 1024)
    msg = r"token id 1024 at position 2 in batch 3 is outside the model's vocabulary \(vocab_size=1024\)"
    with pytest.raises(ValueError, match=msg):
        check_token_ids([0, 5, 1024, 2000], 1024, where="batch 3")


# ---------------------------------------------------------------- packing


def _random_examples(n, seed, max_len=60):
    rng = random.Random(seed)
    out = []
    for k in range(n):
        length = rng.randint(1, max_len)
        ids = [rng.randrange(1000) for _ in range(length)]
        out.append(TokenizedExample(ids, [rng.random() < 0.6 for _ in range(length)], "mem", k + 1))
    return out


def _naive_ffd(lengths, cap):
    bins, room = [], []
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        b = next((b for b in range(len(bins)) if room[b] >= lengths[i]), None)
        if b is None:
            bins.append([])
            room.append(cap)
            b = len(bins) - 1
        bins[b].append(i)
        room[b] -= lengths[i]
    return [sorted(b) for b in bins]


def _check_doc(batch: PackedBatch, j: int, ex: TokenizedExample):
    s, e = int(batch.cu_seqlens[j]), int(batch.cu_seqlens[j + 1])
    assert batch.input_ids[s:e].tolist() == ex.input_ids
    assert batch.position_ids[s:e].tolist() == list(range(len(ex)))
    want = [ex.input_ids[t + 1] if ex.loss_mask[t + 1] else -100 for t in range(len(ex) - 1)] + [-100]
    assert batch.targets[s:e].tolist() == want


def test_ffd_packing_places_every_example_once_within_budget():
    examples = _random_examples(300, seed=1)
    lengths = [len(e) for e in examples]
    assert first_fit_decreasing(lengths, 128) == _naive_ffd(lengths, 128)
    batches = pack_examples(examples, max_tokens=128)
    assert sorted(i for b in batches for i in b.example_ids) == list(range(len(examples)))
    assert len(batches) <= 11 / 9 * (-(-sum(lengths) // 128)) + 1
    for b in batches:
        assert b.num_tokens <= 128 and b.num_tokens == sum(b.seq_lens)
        assert b.input_ids.dtype == b.position_ids.dtype == b.targets.dtype == torch.int64
        assert b.cu_seqlens.dtype == torch.int32 and b.cu_seqlens.tolist()[-1] == b.num_tokens
        assert b.loss_mask.dtype == torch.bool and torch.equal(b.loss_mask, b.targets != -100)
        assert b.max_seqlen == max(b.seq_lens) and b.num_seqs == len(b.example_ids)
        for j, i in enumerate(b.example_ids):
            _check_doc(b, j, examples[i])
            assert b.split(b.input_ids)[j].tolist() == examples[i].input_ids
    moved = batches[0].to("meta")
    tensors = (moved.input_ids, moved.position_ids, moved.cu_seqlens, moved.targets, moved.loss_mask)
    assert all(t.device.type == "meta" for t in tensors)


def test_overlong_examples_raise_naming_the_row_or_truncate():
    long = TokenizedExample(list(range(50)), [True] * 50, "data/train.jsonl", 42)
    examples = _random_examples(5, seed=2, max_len=20) + [long]
    msg = r"example 5 \(data/train\.jsonl, row 42\) has 50 tokens, more than max_tokens=32"
    with pytest.raises(ValueError, match=msg):
        pack_examples(examples, max_tokens=32)
    batches = pack_examples(examples, max_tokens=32, overflow="truncate")
    (b, j), = [(b, j) for b in batches for j, i in enumerate(b.example_ids) if i == 5]
    _check_doc(b, j, TokenizedExample(list(range(32)), [True] * 32))
    with pytest.raises(ValueError, match="overflow must be one of"):
        pack_examples(examples, 32, overflow="drop")
    with pytest.raises(ValueError, match="document 0 is empty"):
        make_packed_batch([([], [])])


def test_rl_pair_packing_and_scatter_map():
    rng = random.Random(3)
    n = 23
    prompts = [[rng.randrange(1, 500) for _ in range(rng.randint(1, 12))] for _ in range(n)]
    completions = [[rng.randrange(1, 500) for _ in range(rng.randint(0, 20))] for _ in range(n)]
    sampler_logprobs = [-torch.rand(len(c), dtype=torch.float64) for c in completions]
    advantages = torch.randn(n)
    micro = pack_rl(prompts, completions, max_tokens=40)
    assert sorted(i for m in micro for i in m.sample_ids) == list(range(n))
    for m in micro:
        b = m.batch
        assert b.num_tokens <= 40 and m.sample_ids == b.example_ids
        assert m.token_index.tolist() == b.loss_mask.nonzero().reshape(-1).tolist()
        assert b.targets[m.token_index].tolist() == [t for i in m.sample_ids for t in completions[i]]
        lp, adv = m.scatter_tokens(sampler_logprobs), m.scatter_samples(advantages)
        assert lp.dtype == torch.float64 and lp.shape == adv.shape == (b.num_tokens,)
        for j, i in enumerate(m.sample_ids):
            s, p, c = int(b.cu_seqlens[j]), len(prompts[i]), len(completions[i])
            assert b.input_ids[s:s + p + c].tolist() == prompts[i] + completions[i]
            assert torch.equal(lp[s + p - 1:s + p - 1 + c], sampler_logprobs[i])
            assert torch.all(adv[s + p - 1:s + p - 1 + c] == advantages[i])
            assert int(m.completion_cu[j + 1] - m.completion_cu[j]) == c
        assert torch.all(lp[~b.loss_mask] == 0) and torch.all(adv[~b.loss_mask] == 0)
        assert [t.tolist() for t in m.gather_tokens(b.targets)] == [completions[i] for i in m.sample_ids]
    (whole,) = pack_rl(prompts, completions)
    assert whole.sample_ids == list(range(n))
    cut = pack_rl([[1, 2, 3]], [list(range(10, 30))], max_tokens=8, overflow="truncate")[0]
    assert cut.completion_lens == [5] and cut.batch.input_ids.tolist() == [1, 2, 3, 10, 11, 12, 13, 14]
    assert cut.scatter_tokens([torch.arange(20.0)]).tolist() == [0, 0, 0, 1, 2, 3, 4, 0]
    with pytest.raises(ValueError, match="pair 0 has 3 prompt \\+ 20 completion tokens, more than max_tokens=8"):
        pack_rl([[1, 2, 3]], [list(range(20))], max_tokens=8)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        pack_rl([[1], []], [[2], [3]])
    with pytest.raises(ValueError, match=r"values\[0\] has 1 entries, the completion has 2 tokens"):
        pack_rl([[1]], [[2, 3]])[0].scatter_tokens([torch.zeros(1)])


# ---------------------------------------------------------------- embedded tiny assets


def test_tiny_tokenizer_round_trips_code(tok, tmp_path):
    assert [tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [0, 1, 2]
    assert tok.eos_token_id == 2 and tok.pad_token_id == 0 and 512 <= len(tok) <= 1024
    texts = make_tiny.make_corpus(200, seed=7) + [
        "def solve():\n\tn = int(input())\n    print(n ** 2 // 7 % 3, 'caf\u00e9', \"\u2713\")  # \u4e2d\u6587\n\n",
        "x=1;y=-2.5e3\r\nprint(f'{x!r:>10}')\n" + "\u00a0 \t \n" * 3,
    ]
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
    sample = "\n".join(texts[:50])
    assert len(tok.encode(sample)) < 0.5 * len(sample)  # merges pay off on this kind of text
    # Loaded without the model config (TokenizersBackend rather than Qwen2Tokenizer), it encodes the same.
    alone = tmp_path / "tok"
    alone.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_tokenizer_path() / name, alone / name)
    assert load_tokenizer(alone).encode(sample) == tok.encode(sample)


def test_tiny_model_config_builds_a_qwen2_model(tok):
    from transformers import AutoConfig, Qwen2ForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_config_path().parent, local_files_only=True)
    assert config.model_type == "qwen2" and config.vocab_size % 64 == 0 and config.vocab_size >= len(tok)
    assert (config.eos_token_id, config.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)
    assert config.tie_word_embeddings and (config.num_attention_heads, config.num_key_value_heads) == (8, 4)
    model = Qwen2ForCausalLM(config).eval()
    enc = tok.apply_chat_template(CHAT[:2], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = enc["input_ids"]
    with torch.no_grad():
        assert model(ids).logits.shape == (1, ids.shape[1], config.vocab_size)
    assert sum(p.stat().st_size for p in tiny_tokenizer_path().iterdir() if p.is_file()) < 200 * 1024


def test_make_tiny_is_deterministic_and_matches_shipped_files(tmp_path):
    out = make_tiny.build(tmp_path / "tiny")
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (out / name).read_bytes() == (tiny_tokenizer_path() / name).read_bytes(), name
