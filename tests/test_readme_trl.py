"""README.md's "From TRL" lines, exactly as written between ``<!-- from-trl -->`` and ``<!-- /from-trl -->``, run
one GRPO step and one SFT step of TRL's trainers on a tiny Qwen2 (CPU, fp32) through vt_core's kernels.

The snippet names ``model_path``, ``reward_fn``, ``prompts`` and ``examples``; this test defines them, and sizes
TRL's configs for a test (one step, short completions, no checkpoints, CPU, fp32) by wrapping GRPOConfig and
SFTConfig; every line of the snippet runs as written."""

import re
from pathlib import Path

import torch
import trl
from datasets import Dataset
from transformers import Qwen2Config, Qwen2ForCausalLM

import vt_core.integrations.trl as vt_trl
from vt_core.data import load_tokenizer, tiny_tokenizer_path

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"<!-- from-trl -->(.*?)<!-- /from-trl -->", re.S)
SMALL = dict(max_steps=1, per_device_train_batch_size=2, report_to=[], use_cpu=True, bf16=False,
             save_strategy="no", logging_steps=1)


def readme_snippet() -> str:
    match = BLOCK.search(README.read_text())
    assert match, f"{README} has no block between <!-- from-trl --> and <!-- /from-trl -->"
    code = re.search(r"```python\n(.*?)```", match.group(1), re.S)
    assert code, "the From TRL block of README.md has no ```python fence"
    return code.group(1)


def run_snippet(code: str, tmp_path: Path, monkeypatch) -> dict:
    """Run ``code`` in tmp_path with the names it expects; returns the trainers it enabled."""
    torch.manual_seed(0)
    model_path = tmp_path / "tiny_qwen2"
    config = Qwen2Config(vocab_size=1024, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=0, bos_token_id=0, eos_token_id=2)
    Qwen2ForCausalLM(config).save_pretrained(model_path)
    load_tokenizer(tiny_tokenizer_path()).save_pretrained(model_path)

    grpo_cls, sft_cls = trl.GRPOConfig, trl.SFTConfig

    def grpo_config(**kw):
        return grpo_cls(**{**kw, **SMALL, "num_generations": 2, "max_completion_length": 6})

    def sft_config(**kw):
        return sft_cls(**{**kw, **SMALL})

    monkeypatch.setattr(trl, "GRPOConfig", grpo_config)
    monkeypatch.setattr(trl, "SFTConfig", sft_config)
    enabled = {}
    enable = vt_trl.enable

    def recording_enable(trainer):
        enabled[type(trainer).__name__] = trainer
        return enable(trainer)

    monkeypatch.setattr(vt_trl, "enable", recording_enable)
    monkeypatch.chdir(tmp_path)
    namespace = {
        "model_path": str(model_path),
        "reward_fn": lambda completions, **kw: [float(len(c)) for c in completions],
        "prompts": Dataset.from_list([{"prompt": f"def f{i}(x):"} for i in range(4)]),
        "examples": Dataset.from_list([{"prompt": f"def f{i}(x):", "completion": " return x + 1"} for i in range(4)]),
    }
    exec(compile(code, str(README) + ":from-trl", "exec"), namespace)
    return enabled


def test_readme_from_trl_lines_run(tmp_path, monkeypatch):
    enabled = run_snippet(readme_snippet(), tmp_path, monkeypatch)
    assert set(enabled) == {"GRPOTrainer", "SFTTrainer"}
    grpo, sft = enabled["GRPOTrainer"], enabled["SFTTrainer"]
    assert grpo.state.global_step == 1 and sft.state.global_step == 1
    assert grpo._vt_core.calls["rl_loss"] >= 1 and grpo._vt_core.calls["trl_loss"] == 0
    assert sft._vt_core.calls["cross_entropy"] >= 1 and sft._vt_core.calls["trl_loss"] == 0
    assert sft.model.config._attn_implementation == "vt_packed"
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in grpo.state.log_history + sft.state.log_history
               if "loss" in h)
