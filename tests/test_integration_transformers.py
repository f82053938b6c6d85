"""A plain transformers Qwen2 model with attn_implementation="vt_packed" on a position_ids-packed batch gives
the same loss and gradients as the same weights (transformers' own SDPA attention) on each document alone."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from vt_core.integrations.transformers import cu_seqlens_from_position_ids, register_packed_attention

LENS = [5, 17, 1, 9]


def _config(**kw):
    return Qwen2Config(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, use_cache=False, **kw)


def _models(**kw):
    name = register_packed_attention()
    ours = Qwen2ForCausalLM._from_config(_config(**kw), attn_implementation=name)
    theirs = Qwen2ForCausalLM._from_config(_config(**kw), attn_implementation="sdpa")
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _per_document(model, docs):
    """Summed token loss and its gradients, running each document alone."""
    model.zero_grad()
    total = 0.0
    for ids in docs:
        if len(ids) < 2:
            continue
        out = model(input_ids=ids[None], labels=ids[None])
        loss = out.loss * (len(ids) - 1)
        loss.backward()
        total += loss.item()
    return total, _grads(model)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_packed_batch_equals_documents_alone(monkeypatch, backend):
    monkeypatch.setenv("VT_BACKEND", backend)
    ours, theirs = _models()
    docs = [torch.randint(0, 97, (n,)) for n in LENS]
    input_ids = torch.cat(docs)[None]
    position_ids = torch.cat([torch.arange(n) for n in LENS])[None]
    labels = input_ids.clone()
    labels[0, torch.tensor([0] + torch.tensor(LENS).cumsum(0)[:-1].tolist())] = -100  # no cross-document targets
    out = ours(input_ids=input_ids, position_ids=position_ids, labels=labels)
    n_targets = sum(n - 1 for n in LENS)
    (out.loss * n_targets).backward()
    packed_loss, packed_grads = (out.loss * n_targets).item(), _grads(ours)

    ref_loss, ref_grads = _per_document(theirs, docs)
    assert packed_loss == pytest.approx(ref_loss, rel=1e-5)
    assert packed_grads.keys() == ref_grads.keys()
    for name, g in ref_grads.items():
        torch.testing.assert_close(packed_grads[name], g, atol=1e-5, rtol=1e-4, msg=name)


def test_padded_batch_and_explicit_cu_seqlens():
    """A right-padded batch (2-D attention mask) and explicit cu_seq_lens_q both match transformers."""
    ours, theirs = _models()
    ids = torch.randint(0, 97, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 7:] = 0
    ref = theirs(input_ids=ids, attention_mask=mask).logits
    got = ours(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got[0], ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1, :7], ref[1, :7], atol=1e-5, rtol=1e-5)

    flat = torch.cat([ids[0], ids[1, :7]])[None]
    pos = torch.cat([torch.arange(12), torch.arange(7)])[None]
    cu = torch.tensor([0, 12, 19], dtype=torch.int32)
    got_cu = ours(input_ids=flat, position_ids=pos, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=12,
                  max_length_k=12).logits
    torch.testing.assert_close(got_cu[0, :12], ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_cu[0, 12:], ref[1, :7], atol=1e-5, rtol=1e-5)


def test_sliding_window_layers_match():
    ours, theirs = _models(use_sliding_window=True, sliding_window=4, max_window_layers=1)
    ids = torch.randint(0, 97, (1, 15))
    torch.testing.assert_close(ours(input_ids=ids).logits, theirs(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_cu_seqlens_from_position_ids_and_cache_refusal():
    cu, max_len = cu_seqlens_from_position_ids(torch.tensor([[0, 1, 2, 0, 0, 1]]))
    assert cu.tolist() == [0, 3, 4, 6] and max_len == 3
    ours, _ = _models()
    with pytest.raises(ValueError, match="use_cache=False"):
        ours.generate(torch.randint(0, 97, (1, 4)), max_new_tokens=2, do_sample=False, use_cache=True)
