"""vt_core.model against transformers' own Qwen2 / Llama on tiny random configs (same weights)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

import vt_core.model as vm
from vt_core.kernels import packed_attention_reference

import transformers

BASE = dict(vocab_size=97, num_hidden_layers=3, initializer_range=0.1, rms_norm_eps=1e-6)
CONFIGS = {
    "qwen2_tied_gqa": dict(
        model_type="qwen2", hidden_size=48, intermediate_size=72, num_attention_heads=6, num_key_value_heads=2,
        tie_word_embeddings=True, rope_theta=1_000_000.0, rope_scaling=None,
    ),
    "llama_untied_llama3": dict(
        model_type="llama", hidden_size=72, intermediate_size=100, num_attention_heads=6, num_key_value_heads=3,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8},
    ),
    "llama_linear_bias_mqa": dict(
        model_type="llama", hidden_size=48, intermediate_size=60, num_attention_heads=4, num_key_value_heads=1,
        tie_word_embeddings=True, attention_bias=True, mlp_bias=True, rope_scaling={"type": "linear", "factor": 2.0},
    ),
    "qwen2_yarn_window": dict(
        model_type="qwen2", hidden_size=48, intermediate_size=72, num_attention_heads=4, num_key_value_heads=2,
        tie_word_embeddings=False, max_position_embeddings=64,
        rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
        use_sliding_window=True, sliding_window=4, max_window_layers=1,
    ),
    "llama_dynamic": dict(
        model_type="llama", hidden_size=48, intermediate_size=72, num_attention_heads=6, num_key_value_heads=2,
        tie_word_embeddings=False, max_position_embeddings=16, rope_scaling={"rope_type": "dynamic", "factor": 2.0},
    ),
}


def _cfg(name: str, **overrides) -> dict:
    return {**BASE, **CONFIGS[name], **overrides}


def _hf_model(cfg: dict, dtype=torch.float32):
    cfg = dict(cfg)
    config = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=dtype)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if "norm" in name else 0.1 * noise)
    return model.eval()


def _packed(lengths: list[int], vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (sum(lengths),), generator=g)
    pos = torch.cat([torch.arange(n) for n in lengths])
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return ids, pos, cu


def _padded(ids: torch.Tensor, lengths: list[int]):
    batch = torch.zeros(len(lengths), max(lengths), dtype=torch.long, device=ids.device)
    mask = torch.zeros_like(batch)
    for i, seq in enumerate(ids.split(lengths)):
        batch[i, : len(seq)] = seq
        mask[i, : len(seq)] = 1
    return batch, mask


@torch.no_grad()
def _hf_logits(hf, ids: torch.Tensor, lengths: list[int], one_by_one: bool = False) -> torch.Tensor:
    """transformers' logits at the real positions, flattened to [T, V] in packed order."""
    seqs = ids.split(lengths)
    if one_by_one:  # in ascending length: transformers' dynamic RoPE keeps state between calls
        out = {i: hf(seqs[i][None]).logits[0] for i in sorted(range(len(seqs)), key=lambda i: lengths[i])}
        return torch.cat([out[i] for i in range(len(seqs))])
    batch, mask = _padded(ids, lengths)
    logits = hf(input_ids=batch, attention_mask=mask).logits
    return torch.cat([logits[i, :n] for i, n in enumerate(lengths)])


def _our_logits(model, ids, pos, cu) -> torch.Tensor:
    with torch.no_grad():
        return model.logits(model(ids, pos, cu))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers(name, tmp_path):
    cfg = _cfg(name)
    hf = _hf_model(cfg)
    hf.save_pretrained(tmp_path)
    ours = vm.load(tmp_path)
    assert ours.config.tie_word_embeddings == cfg["tie_word_embeddings"]
    lengths = [9, 1, 23] if name == "llama_dynamic" else [11, 1, 7]
    ids, pos, cu = _packed(lengths, cfg["vocab_size"])
    ref = _hf_logits(hf, ids, lengths, one_by_one=name == "llama_dynamic")
    got = _our_logits(ours, ids, pos, cu)
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() < 1e-4
    assert ref.abs().max().item() > 0.5  # the comparison is not between near-zero logits


@pytest.mark.parametrize("name", ["qwen2_tied_gqa", "qwen2_yarn_window", "llama_dynamic"])
def test_packed_equals_each_sequence_alone(name):
    model = vm.from_config(_cfg(name), seed=3)
    lengths = [5, 1, 20, 3] if name == "llama_dynamic" else [5, 1, 12, 3]
    ids, pos, cu = _packed(lengths, BASE["vocab_size"], seed=4)
    packed = _our_logits(model, ids, pos, cu)
    alone = [
        _our_logits(model, seq, torch.arange(len(seq)), torch.tensor([0, len(seq)], dtype=torch.int32))
        for seq in ids.split(lengths)
    ]
    torch.testing.assert_close(packed, torch.cat(alone), rtol=0, atol=1e-5)


def test_save_opens_in_transformers(tmp_path):
    ours = vm.from_config(_cfg("llama_untied_llama3"), seed=5)
    files = ours.save(tmp_path)
    assert files == ["model.safetensors"]
    assert "lm_head.weight" in load_file(str(tmp_path / "model.safetensors"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(hf).__name__ == "LlamaForCausalLM" and hf.dtype == torch.float32
    lengths = [6, 1, 10]
    ids, pos, cu = _packed(lengths, BASE["vocab_size"])
    torch.testing.assert_close(_our_logits(ours, ids, pos, cu), _hf_logits(hf, ids, lengths), rtol=0, atol=1e-4)


def test_sharded_save_loads_everywhere(tmp_path):
    ours = vm.from_config(_cfg("qwen2_yarn_window"), seed=6)
    files = ours.save(tmp_path, max_shard_bytes=40_000)
    assert len(files) > 1 and not (tmp_path / "model.safetensors").exists()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(ours.state_dict()) and set(index["weight_map"].values()) == set(files)
    again = vm.load(tmp_path)
    for name, t in ours.state_dict().items():
        assert torch.equal(again.state_dict()[name], t), name
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    lengths = [8, 3]
    ids, pos, cu = _packed(lengths, BASE["vocab_size"])
    torch.testing.assert_close(_our_logits(again, ids, pos, cu), _hf_logits(hf, ids, lengths), rtol=0, atol=1e-4)
    ours.save(tmp_path)  # a smaller save into the same folder leaves no stale shard or index behind
    assert sorted(p.name for p in tmp_path.iterdir() if "safetensors" in p.name) == ["model.safetensors"]


def test_qwen25_architecture_roundtrip(tmp_path):
    """A Qwen2.5-shaped config.json (Qwen2ForCausalLM, tied, qkv bias, old-style rope keys) both ways."""
    cfg = dict(
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=151, hidden_size=64,
        intermediate_size=88, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=32768, max_window_layers=21, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
        sliding_window=32768, use_sliding_window=False, tie_word_embeddings=True, torch_dtype="bfloat16",
        bos_token_id=150, eos_token_id=150, hidden_act="silu", initializer_range=0.1, use_cache=True,
    )
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(cfg))
    (src / "tokenizer_config.json").write_text("{}")
    ours = vm.from_config(src, seed=7)
    assert ours.lm_head is None and ours.lm_head_weight is ours.model.embed_tokens.weight
    assert ours.model.layers[0].self_attn.q_proj.bias is not None and ours.model.layers[0].self_attn.o_proj.bias is None
    ours.source_path = str(src)
    out = tmp_path / "ours"
    ours.save(out)
    assert "lm_head.weight" not in load_file(str(out / "model.safetensors"))
    assert (out / "tokenizer_config.json").exists()
    saved_cfg = json.loads((out / "config.json").read_text())
    assert saved_cfg["architectures"] == ["Qwen2ForCausalLM"] and saved_cfg["torch_dtype"] == "float32"
    hf = transformers.Qwen2ForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert torch.equal(hf.lm_head.weight, hf.model.embed_tokens.weight)
    lengths = [7, 1, 12]
    ids, pos, cu = _packed(lengths, cfg["vocab_size"])
    torch.testing.assert_close(_our_logits(ours, ids, pos, cu), _hf_logits(hf, ids, lengths), rtol=0, atol=1e-4)
    back = tmp_path / "hf"
    hf.save_pretrained(back)
    again = vm.load(back)
    assert set(again.state_dict()) == set(ours.state_dict())
    for name, t in ours.state_dict().items():
        assert torch.equal(again.state_dict()[name], t), name


def test_gradient_checkpointing_same_gradients():
    model = vm.from_config(_cfg("llama_linear_bias_mqa"), seed=8)
    ids, pos, cu = _packed([9, 1, 6], BASE["vocab_size"], seed=9)
    upstream = torch.randn(ids.shape[0], model.config.hidden_size)

    def grads(ckpt: bool):
        model.zero_grad(set_to_none=True)
        model.gradient_checkpointing = ckpt
        (model(ids, pos, cu) * upstream).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain, ckpt = grads(False), grads(True)
    assert set(plain) == set(ckpt)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=0, atol=1e-6, msg=name)
    assert any(g.abs().max() > 0 for g in plain.values())


def test_attention_hook_replaces_packed_attention():
    model = vm.from_config(_cfg("qwen2_tied_gqa"), seed=10)
    lengths = [4, 1, 6]
    ids, pos, cu = _packed(lengths, BASE["vocab_size"])
    calls = []

    def attention(layer_idx, q, k, v):
        calls.append((layer_idx, tuple(q.shape), tuple(k.shape), tuple(v.shape)))
        scale = model.model.layers[layer_idx].self_attn.scale
        return packed_attention_reference(q, k, v, cu, causal=True, softmax_scale=scale)

    with torch.no_grad():
        hooked = model(ids, pos, None, attention=attention)
        plain = model(ids, pos, cu)
    torch.testing.assert_close(hooked, plain, rtol=0, atol=0)
    T = sum(lengths)
    assert calls == [(i, (T, 6, 8), (T, 2, 8), (T, 2, 8)) for i in range(3)]


def test_bf16_error_bounded_by_transformers_own(tmp_path):
    cfg = _cfg("qwen2_tied_gqa")
    hf32 = _hf_model(cfg)
    hf32.save_pretrained(tmp_path)
    hf16 = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=torch.bfloat16, attn_implementation="eager"
    )
    ours16 = vm.load(tmp_path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in ours16.parameters())
    assert all(n.weight.dtype == torch.bfloat16 for n in ours16.modules() if isinstance(n, vm.RMSNorm))
    lengths = [11, 1, 7]
    ids, pos, cu = _packed(lengths, cfg["vocab_size"])
    ref = _hf_logits(hf32, ids, lengths)
    with torch.no_grad():
        hidden = ours16(ids, pos, cu)
    assert hidden.dtype == torch.bfloat16
    ours_err = (ours16.logits(hidden) - ref).abs().max().item()
    hf_err = (_hf_logits(hf16.eval(), ids, lengths).float() - ref).abs().max().item()
    assert ours_err <= 2 * hf_err


def test_bad_paths_and_configs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        vm.load(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*config.json"):
        vm.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**_cfg("qwen2_tied_gqa"), "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="unsupported model_type 'gpt2'"):
        vm.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(_cfg("qwen2_tied_gqa")))
    with pytest.raises(FileNotFoundError, match="neither model.safetensors"):
        vm.load(tmp_path)
    with pytest.raises(ValueError, match="not a multiple"):
        vm.from_config(_cfg("qwen2_tied_gqa", num_key_value_heads=4))
    with pytest.raises(ValueError, match="unsupported rope_type 'longrope'"):
        vm.from_config(_cfg("qwen2_tied_gqa", rope_scaling={"rope_type": "longrope"}))


def test_bad_tensors_are_named(tmp_path):
    model = vm.from_config(_cfg("llama_untied_llama3"), seed=11)
    model.save(tmp_path)
    file = str(tmp_path / "model.safetensors")
    good = load_file(file)

    def load_with(tensors):
        save_file(tensors, file, metadata={"format": "pt"})
        return vm.load(tmp_path)

    name = "model.layers.1.self_attn.k_proj.weight"
    with pytest.raises(ValueError, match=rf"'{name}' has shape \(24, 72\), the model expects \(36, 72\)"):
        load_with({**good, name: torch.zeros(24, 72)})
    with pytest.raises(ValueError, match=r"missing tensors: lm_head.weight \(97, 72\)"):
        load_with({k: v for k, v in good.items() if k != "lm_head.weight"})
    with pytest.raises(ValueError, match=r"unexpected tensors.*model.layers.7.mlp.up_proj.weight \(3,\)"):
        load_with({**good, "model.layers.7.mlp.up_proj.weight": torch.zeros(3)})


def test_bad_forward_inputs():
    model = vm.from_config(_cfg("qwen2_tied_gqa"), seed=12)
    ids, pos, cu = _packed([3, 2], BASE["vocab_size"])
    with pytest.raises(ValueError, match="must both be"):
        model(ids[None], pos[None], cu)
    with pytest.raises(ValueError, match="from 0 to T=5"):
        model(ids, pos, torch.tensor([0, 3, 4], dtype=torch.int32))
    with pytest.raises(ValueError, match="cu_seqlens is required"):
        model(ids, pos, None)


def test_save_in_another_dtype(tmp_path):
    model = vm.from_config(_cfg("qwen2_tied_gqa"), seed=13)
    model.save(tmp_path, dtype="bfloat16")
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["torch_dtype"] == "bfloat16" and cfg["tie_word_embeddings"] is True
    assert all(t.dtype == torch.bfloat16 for t in load_file(str(tmp_path / "model.safetensors")).values())
    again = vm.load(tmp_path, dtype=torch.bfloat16)
    for name, t in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], t.bfloat16()), name
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(ValueError, match="max_shard_bytes"):
        model.save(tmp_path, max_shard_bytes=0)
    with pytest.raises(ValueError, match="not a torch floating-point dtype"):
        model.save(tmp_path, dtype="int8")


def test_embedded_tiny_default_config(tmp_path):
    tiny = os.path.join(os.path.dirname(vm.__file__), "assets", "tiny")
    model = vm.from_config(tiny, seed=14)
    assert model.config.model_type == "qwen2" and model.lm_head is None
    model.save(tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    lengths = [5, 9]
    ids, pos, cu = _packed(lengths, model.config.vocab_size)
    torch.testing.assert_close(_our_logits(model, ids, pos, cu), _hf_logits(hf, ids, lengths), rtol=0, atol=1e-4)


def test_triton_attention_path_matches_torch(monkeypatch):
    """The model on the Triton packed-attention kernel (interpreter on CPU) equals the torch path, fwd + bwd."""
    cfg = _cfg("qwen2_tied_gqa", hidden_size=64, num_attention_heads=4, num_hidden_layers=1)  # head_dim 16
    model = vm.from_config(cfg, seed=15)
    ids, pos, cu = _packed([7, 1, 12], cfg["vocab_size"])
    upstream = torch.randn(ids.shape[0], cfg["hidden_size"])
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("VT_BACKEND", backend)
        model.zero_grad(set_to_none=True)
        hidden = model(ids, pos, cu)
        (hidden * upstream).sum().backward()
        results[backend] = (hidden.detach(), {n: p.grad for n, p in model.named_parameters()})
    (h_ref, g_ref), (h_tri, g_tri) = results["torch"], results["triton"]
    torch.testing.assert_close(h_tri, h_ref, rtol=0, atol=1e-5)
    for name, g in g_ref.items():
        torch.testing.assert_close(g_tri[name], g, rtol=1e-4, atol=1e-4 * g.abs().max().item(), msg=name)


@pytest.mark.gpu
def test_cuda_bf16_error_bounded_by_transformers_own(tmp_path):
    cfg = _cfg("qwen2_tied_gqa", hidden_size=96, num_attention_heads=6, num_key_value_heads=2)  # head_dim 16
    hf32 = _hf_model(cfg)
    hf32.save_pretrained(tmp_path)
    lengths = [37, 1, 90]
    ids, pos, cu = _packed(lengths, cfg["vocab_size"])
    ref = _hf_logits(hf32, ids, lengths)
    hf16 = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=torch.bfloat16, attn_implementation="eager"
    )
    hf_err = (_hf_logits(hf16.cuda().eval(), ids.cuda(), lengths).float().cpu() - ref).abs().max().item()
    ours = vm.load(tmp_path, dtype="bfloat16", device="cuda")
    assert ours.lm_head_weight.is_cuda and ours.lm_head_weight.dtype == torch.bfloat16
    got = _our_logits(ours, ids.cuda(), pos.cuda(), cu.cuda()).cpu()
    assert (got - ref).abs().max().item() <= 2 * hf_err
