"""vt_core's packed attention as a local repository of the `kernels` distribution: transformers loads it for
attn_implementation="vt-core/packed-attention" with no network (HF_HUB_OFFLINE=1), and a tiny Qwen2 saved by
transformers gives the stock SDPA model's logits and gradients (fp32) on plain, padded and packed batches."""

import pytest
import torch
from kernels import get_local_kernel
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

import vt_core.integrations.hub as hub

V = 97


@pytest.fixture
def models(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LOCAL_KERNELS", "someone/else=/elsewhere")
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64, use_cache=False)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    attn = hub.use_local_kernels()
    assert attn == hub.REPO_ID
    assert hub.os.environ["LOCAL_KERNELS"] == f"someone/else=/elsewhere:{hub.REPO_ID}={hub.REPO_PATH}"
    calls, packed = [], hub.packed_attention

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return packed(*args, **kwargs)

    monkeypatch.setattr(hub, "packed_attention", counted)
    ours = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=attn, dtype=torch.float32)
    stock = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa", dtype=torch.float32)
    assert ours.config._attn_implementation == hub.REPO_ID
    return ours, stock, calls


def test_the_local_repository_loads_with_kernels():
    kernel = get_local_kernel(hub.REPO_PATH)
    assert kernel.flash_attn_varlen_func is hub.flash_attn_varlen_func
    assert kernel.flash_attn_func is hub.flash_attn_func


def test_logits_and_grads_equal_stock_model(models):
    ours, stock, calls = models
    ids = torch.randint(0, V, (2, 13))
    mask = torch.ones(2, 13, dtype=torch.long)
    mask[1, 9:] = 0
    for kwargs in ({}, {"attention_mask": mask}):
        got, ref = ours(ids, **kwargs).logits, stock(ids, **kwargs).logits
        keep = mask.bool() if kwargs else torch.ones_like(mask, dtype=torch.bool)
        torch.testing.assert_close(got[keep], ref[keep], rtol=1e-5, atol=1e-5)
    assert len(calls) == 2 * 2  # two layers, two forwards: every attention ran vt_core's kernel

    labels = ids.masked_fill(mask == 0, -100)
    for model in (ours, stock):
        model(ids, attention_mask=mask, labels=labels).loss.backward()
    for (name, p), q in zip(ours.named_parameters(), stock.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_position_ids_packed_batch_equals_documents_alone(models):
    ours, stock, calls = models
    lens = [5, 11, 1, 7]
    docs = [torch.randint(0, V, (n,)) for n in lens]
    packed = torch.cat(docs)[None]
    position_ids = torch.cat([torch.arange(n) for n in lens])[None]
    got = ours(packed, position_ids=position_ids).logits[0]
    ref = torch.cat([stock(d[None]).logits[0] for d in docs])
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert calls and calls[-1][0] == sum(lens)


def test_unsupported_calls_raise():
    q = torch.randn(6, 4, 16)
    k = torch.randn(5, 2, 16)
    cu = torch.tensor([0, 6], dtype=torch.int32)
    with pytest.raises(ValueError, match="KV cache"):
        hub.flash_attn_varlen_func(q, k, k, cu, torch.tensor([0, 5], dtype=torch.int32), 6, 5, causal=True)
    with pytest.raises(ValueError, match="dropout"):
        hub.flash_attn_func(q[None], q[None, :, :2], q[None, :, :2], dropout_p=0.1)
    with pytest.raises(ValueError, match="soft-capping"):
        hub.flash_attn_func(q[None], q[None, :, :2], q[None, :, :2], softcap=30.0)


def test_sliding_window_matches_packed_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(9, 4, 16, generator=g) for _ in range(3))
    cu = torch.tensor([0, 9], dtype=torch.int32)
    got = hub.flash_attn_varlen_func(q, k, v, cu, cu, 9, 9, causal=True, window_size=(2, 2))
    ref = hub.packed_attention(q, k, v, cu, 9, causal=True, window=3)
    torch.testing.assert_close(got, ref)
