"""vt_core.integrations.trl.enable against TRL itself (CPU, fp32, a tiny Qwen2 saved by transformers): one
GRPOTrainer / SFTTrainer loss and its gradients with and without the opt-in, same weights and the same batch;
the fallbacks stay on TRL's path and are logged once; the opt-in refuses TRL internals it was not written for."""

import logging
import math
import types

import pytest
import torch
from datasets import Dataset
from transformers import Qwen2Config, Qwen2ForCausalLM
from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

import vt_core.integrations._trl_internals as trl_internals
import vt_core.integrations.trl as vt_trl
from vt_core.data import load_tokenizer, tiny_tokenizer_path

V, P, C = 1024, 5, 7
LENGTHS = [7, 4, 1, 6]  # completion lengths of the 4 rows (right padded to C)
PROMPT_PAD = [0, 2, 1, 0]  # left padding of the prompts


def save_tiny_qwen2(path, **config_kw) -> str:
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, pad_token_id=0, bos_token_id=0, eos_token_id=2, **config_kw)
    Qwen2ForCausalLM(config).save_pretrained(path)
    load_tokenizer(tiny_tokenizer_path()).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return save_tiny_qwen2(tmp_path_factory.mktemp("tiny_qwen2"))


def _reward(completions, **kwargs):
    return [0.0] * len(completions)


def grpo_trainer(model_path, tmp_path, **kw):
    kw = {"loss_type": "grpo", "beta": 0.0, "epsilon_high": 0.28, **kw}
    args = GRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=C, report_to=[], use_cpu=True, gradient_checkpointing=False,
                      temperature=0.9, bf16=False, **kw)
    trainer = GRPOTrainer(model=model_path, reward_funcs=_reward, args=args,
                          processing_class=load_tokenizer(model_path),
                          train_dataset=Dataset.from_list([{"prompt": "hi"}] * 8))
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 2  # as inside train(); both paths divide by it
    return trainer


def grpo_inputs(trainer, importance_sampling=None):
    """A batch as GRPOTrainer._generate_and_score_completions returns it, with old / reference / sampler logprobs
    perturbed from the model's so that the ratio is clipped on both sides and the KL is not zero."""
    g = torch.Generator().manual_seed(1)
    B = len(LENGTHS)
    prompt_ids = torch.randint(3, V, (B, P), generator=g)
    prompt_mask = torch.ones(B, P, dtype=torch.long)
    for b, n in enumerate(PROMPT_PAD):
        prompt_ids[b, :n], prompt_mask[b, :n] = 0, 0
    completion_ids = torch.randint(3, V, (B, C), generator=g)
    completion_mask = torch.zeros(B, C, dtype=torch.long)
    for b, n in enumerate(LENGTHS):
        completion_mask[b, :n] = 1
        completion_ids[b, n:] = 0
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
              "completion_mask": completion_mask, "advantages": torch.tensor([1.1, -0.8, 0.5, -1.3]),
              "num_items_in_batch": completion_mask.sum() * 2}  # the generation batch is 2 micro-batches
    ids, mask = torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1)
    with torch.no_grad():
        logps, _, _ = GRPOTrainer._get_per_token_logps_and_entropies(trainer, trainer.model, ids, mask, C)
        inputs["old_per_token_logps"] = logps + 0.3 * torch.randn(B, C, generator=g)
        if trainer.beta != 0:
            ref, _, _ = GRPOTrainer._get_per_token_logps_and_entropies(trainer, trainer.ref_model, ids, mask, C)
            inputs["ref_per_token_logps"] = ref + 0.3 * torch.randn(B, C, generator=g)
    if importance_sampling is not None:  # TRL's vLLM importance-sampling correction, computed as TRL does
        trainer.use_vllm = trainer.vllm_importance_sampling_correction = True
        trainer.vllm_importance_sampling_mode = importance_sampling
        old = inputs["old_per_token_logps"]
        sampling = old + 0.4 * torch.randn(B, C, generator=g)
        sampling[0, 2] = float("nan")  # a token the sampler could not score
        diff = torch.nan_to_num((old - sampling) * completion_mask, nan=0.0)
        if importance_sampling.startswith("sequence"):
            diff = diff.sum(-1, keepdim=True)
        ratio = torch.exp(diff)
        cap = trainer.vllm_importance_sampling_clip_max
        ratio = ratio.clamp(max=cap) if importance_sampling.endswith("truncate") else ratio.masked_fill(ratio > cap, 0)
        inputs.update(sampling_per_token_logps=sampling, importance_sampling_ratio=ratio)
    return inputs


def loss_and_grads(trainer, inputs):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, dict(inputs))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def assert_same(ours, theirs):
    (loss, grads), (ref_loss, ref_grads) = ours, theirs
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5, abs=1e-7)
    assert grads.keys() == ref_grads.keys() and grads
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def with_and_without(trainer, inputs):
    stock = loss_and_grads(trainer, inputs)
    vt_trl.enable(trainer)
    ours = loss_and_grads(trainer, inputs)
    return ours, stock


GRPO_CASES = [
    *[dict(loss_type=lt, beta=beta) for lt in vt_trl.GRPO_LOSS_TYPES for beta in (0.0, 0.04)],
    dict(loss_type="grpo", beta=0.04, importance_sampling_level="sequence", epsilon=3e-2, epsilon_high=4e-2),
    dict(loss_type="bnpo", delta=1.5),
    dict(loss_type="dapo", importance_sampling="token_truncate"),
    dict(loss_type="grpo", beta=0.04, importance_sampling="sequence_mask"),
    dict(loss_type="dr_grpo", importance_sampling="token_mask"),
]


@pytest.mark.parametrize("case", GRPO_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_grpo_loss_and_grads_match_trl(model_path, tmp_path, case):
    case = dict(case)
    importance_sampling = case.pop("importance_sampling", None)
    if case.get("beta"):
        case["use_bias_correction_kl"] = False  # TRL's default weights the KL by the ratio: vt_core's KL is plain k3
    trainer = grpo_trainer(model_path, tmp_path, **case)
    inputs = grpo_inputs(trainer, importance_sampling)
    ours, stock = with_and_without(trainer, inputs)
    assert_same(ours, stock)
    assert trainer._vt_core.calls["rl_loss"] == 1 and trainer._vt_core.calls["trl_loss"] == 0
    metrics = trainer._metrics["train"]
    assert len(metrics["entropy"]) == 2 and metrics["entropy"][1] == pytest.approx(metrics["entropy"][0], rel=1e-5)
    if importance_sampling is None and case.get("importance_sampling_level") != "sequence":
        for key in ("clip_ratio/low_mean", "clip_ratio/high_mean"):
            assert metrics[key][1] == pytest.approx(metrics[key][0], abs=1e-7), key
        assert metrics["clip_ratio/low_mean"][1] > 0 and metrics["clip_ratio/high_mean"][1] > 0
    if case.get("beta"):
        assert metrics["kl"][1] == pytest.approx(metrics["kl"][0], rel=1e-5)


@pytest.mark.parametrize("case", [dict(loss_type="grpo", beta=0.04),  # use_bias_correction_kl=True: TRL's default
                                  dict(loss_type="cispo", epsilon_high=5.0),
                                  dict(loss_type="dapo", top_entropy_quantile=0.5)],
                         ids=["bias_correction_kl", "cispo", "top_entropy_quantile"])
def test_grpo_fallbacks_keep_trl_loss_with_vt_logprobs_and_log_once(model_path, tmp_path, case, caplog):
    vt_trl._LOGGED.clear()
    trainer = grpo_trainer(model_path, tmp_path, **case)
    inputs = grpo_inputs(trainer)
    with caplog.at_level(logging.WARNING, logger="vt_core.integrations.trl"):
        ours, stock = with_and_without(trainer, inputs)
        loss_and_grads(trainer, inputs)
    assert_same(ours, stock)
    calls = trainer._vt_core.calls
    assert calls["trl_loss"] == 2 and calls["rl_loss"] == 0 and calls["logprobs"] == 2
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1 and len(caplog.records) == 1
    assert "GRPO loss stays on TRL's" in caplog.records[0].message


def test_grpo_softcapped_model_stays_on_trl(tmp_path, caplog):
    """TRL's fused LM head soft-caps the logits where the config asks; vt_core does not, so logprobs and loss stay
    TRL's (and say so once)."""
    vt_trl._LOGGED.clear()
    trainer = grpo_trainer(save_tiny_qwen2(tmp_path / "softcap", final_logit_softcapping=3.0), tmp_path)
    inputs = grpo_inputs(trainer)
    with caplog.at_level(logging.WARNING, logger="vt_core.integrations.trl"):
        ours, stock = with_and_without(trainer, inputs)
    assert_same(ours, stock)
    calls = trainer._vt_core.calls
    assert calls["trl_loss"] == 1 and calls["trl_logprobs"] == 1 and calls["rl_loss"] == calls["logprobs"] == 0
    assert sum("final logit soft-capping" in r.message for r in caplog.records) == 2  # logprobs and loss, once each


def test_grpo_reference_and_old_logprobs_match_trl(model_path, tmp_path):
    trainer = grpo_trainer(model_path, tmp_path, beta=0.04)
    inputs = grpo_inputs(trainer)
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    with torch.no_grad():
        ref = [trainer._get_per_token_logps_and_entropies(m, ids, mask, C, batch_size=3, compute_entropy=e)
               for m, e in ((trainer.ref_model, False), (trainer.model, True))]
        vt_trl.enable(trainer)
        ours = [trainer._get_per_token_logps_and_entropies(m, ids, mask, C, batch_size=3, compute_entropy=e)
                for m, e in ((trainer.ref_model, False), (trainer.model, True))]
    assert trainer._vt_core.calls["logprobs"] == 2 and trainer._vt_core.calls["trl_logprobs"] == 0
    for (lp, ent, _), (ref_lp, ref_ent, _) in zip(ours, ref):
        torch.testing.assert_close(lp, ref_lp, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ent, ref_ent, rtol=1e-5, atol=1e-5)
        assert (lp[inputs["completion_mask"] == 0] == 0).all()
    assert ours[0][1] is None and ours[1][1] is not None


def test_disable_restores_trl(model_path, tmp_path):
    trainer = grpo_trainer(model_path, tmp_path)
    forward = trainer.model.forward
    vt_trl.disable(vt_trl.enable(trainer))
    assert "_compute_loss" not in vt_trl.disable(trainer).__dict__
    assert trainer.model.forward.__func__ is forward.__func__ and trainer._vt_core is None


# -- SFT ----------------------------------------------------------------------------------------------------------
def sft_trainer(model_path, tmp_path, padding_free):
    g = torch.Generator().manual_seed(2)
    rows = []
    for n in (9, 4, 13, 6):
        ids = torch.randint(3, V, (n,), generator=g).tolist()
        rows.append({"input_ids": ids, "completion_mask": [0] * (n // 3) + [1] * (n - n // 3)})
    args = SFTConfig(output_dir=str(tmp_path / "sft"), per_device_train_batch_size=4, padding_free=padding_free,
                     max_length=None, completion_only_loss=True, report_to=[], use_cpu=True,
                     gradient_checkpointing=False, bf16=False, model_init_kwargs={"attn_implementation": "sdpa"})
    trainer = SFTTrainer(model=model_path, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=load_tokenizer(model_path))
    trainer.model.train()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    return trainer, batch


@pytest.mark.parametrize("padding_free", [False, True], ids=["padded", "padding_free"])
@pytest.mark.parametrize("num_items", [None, 23])
def test_sft_loss_and_grads_match_trl(model_path, tmp_path, padding_free, num_items):
    trainer, batch = sft_trainer(model_path, tmp_path, padding_free)
    assert ("attention_mask" in batch) != padding_free
    n = None if num_items is None else torch.tensor(num_items)

    def step():
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=n)
        loss.backward()
        return loss.detach(), {k: p.grad.clone() for k, p in trainer.model.named_parameters() if p.grad is not None}

    stock = step()
    vt_trl.enable(trainer)
    assert trainer.model.config._attn_implementation == ("vt_packed" if padding_free else "sdpa")
    assert_same(step(), stock)
    assert trainer._vt_core.calls["cross_entropy"] == 1
    assert trainer._metrics["train"]["num_tokens"] == [2 * trainer._total_train_tokens // 2]
    vt_trl.disable(trainer)
    assert trainer.model.config._attn_implementation == "sdpa"


def test_sft_fallback_dft_stays_on_trl(model_path, tmp_path, caplog):
    vt_trl._LOGGED.clear()
    trainer, batch = sft_trainer(model_path, tmp_path, False)
    trainer.args.loss_type = "dft"
    stock = trainer.compute_loss(trainer.model, dict(batch))
    vt_trl.enable(trainer)
    with caplog.at_level(logging.WARNING, logger="vt_core.integrations.trl"):
        ours = [trainer.compute_loss(trainer.model, dict(batch)) for _ in range(2)]
    assert ours[0].item() == ours[1].item() == pytest.approx(stock.item(), rel=1e-6)
    assert trainer._vt_core.calls == {**trainer._vt_core.calls, "trl_loss": 2, "cross_entropy": 0}
    assert [r.message for r in caplog.records] == ["vt_core.integrations.trl: SFT loss stays on TRL's fused LM head: "
                                                   "loss_type='dft'"]


# -- pinning ------------------------------------------------------------------------------------------------------
def test_enable_refuses_changed_trl_internals(model_path, tmp_path, monkeypatch):
    """The opt-in applies to TRL 1.16's internals; a wrapped method that is gone or has another signature, or a
    loss normaliser it reproduces that changed, raises instead of training with a silently different loss."""
    trainer = grpo_trainer(model_path, tmp_path)
    version = vt_trl.trl_version()

    def other_signature(self, model, inputs, extra):
        return GRPOTrainer._compute_loss(self, model, inputs)

    monkeypatch.setattr(GRPOTrainer, "_compute_loss", other_signature)
    with pytest.raises(vt_trl.TRLIntegrationError, match=rf"TRL {version}: GRPOTrainer._compute_loss has parameters"):
        vt_trl.enable(trainer)
    monkeypatch.undo()
    monkeypatch.delattr(GRPOTrainer, "_get_per_token_logps_and_entropies")
    with pytest.raises(vt_trl.TRLIntegrationError, match="_get_per_token_logps_and_entropies is missing"):
        vt_trl.enable(trainer)
    monkeypatch.undo()
    monkeypatch.setitem(trl_internals.GRPO_PINS, "source", trl_internals.GRPO_PINS["source"] + ("loss = x.mean()",))
    with pytest.raises(vt_trl.TRLIntegrationError, match=r"_compute_loss no longer contains"):
        vt_trl.enable(trainer)
    monkeypatch.undo()
    trainer.model.forward = Qwen2ForCausalLM.forward.__get__(trainer.model)  # no fused LM head
    with pytest.raises(vt_trl.TRLIntegrationError, match="is not TRL's fused LM head"):
        vt_trl.enable(trainer)
    sft = sft_trainer(model_path, tmp_path, False)[0]
    monkeypatch.setattr(SFTTrainer, "compute_loss", lambda self, model, inputs, outputs=None: None)
    with pytest.raises(vt_trl.TRLIntegrationError, match=rf"TRL {version}: SFTTrainer.compute_loss has parameters"):
        vt_trl.enable(sft)
    monkeypatch.undo()
    monkeypatch.setattr(sft, "args", types.SimpleNamespace(loss_type="nll"))  # a config without the field
    with pytest.raises(vt_trl.TRLIntegrationError, match="SFTTrainer.args has no field 'average_tokens_across"):
        vt_trl.enable(sft)


def test_enable_applies_to_this_trl(model_path, tmp_path):
    """What the opt-in wraps is present in the installed TRL, with the signatures it was written for."""
    grpo = vt_trl.enable(grpo_trainer(model_path, tmp_path))
    assert grpo._compute_loss == grpo._vt_core.rl_loss
    sft = vt_trl.enable(sft_trainer(model_path, tmp_path, True)[0])
    assert sft.compute_loss == sft._vt_core.sft_loss
    with pytest.raises(TypeError, match="GRPOTrainer or SFTTrainer"):
        vt_trl.enable(object())
    assert math.isfinite(grpo.compute_loss(grpo.model, grpo_inputs(grpo)).item())
