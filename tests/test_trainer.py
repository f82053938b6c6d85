"""Trainer: SFT/RL steps learn, 1 vs 2 processes agree, kill-and-resume is exact, bad inputs are named."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vt_core.config import apply_overrides
from vt_core.generation import Completion
from vt_core.rewards.base import RewardResult
from vt_core.rewards.registry import register_verifier
from vt_core.trainer.rl import RLConfig, RLTrainer, Rollout
from vt_core.trainer.sft import SFTConfig, SFTTrainer

ROWS = [
    {"prompt": "def add(a, b):", "completion": "\n    return a + b\n"},
    {"prompt": "f(2)=5, f(3)=7", "completion": " def f(x): return 2*x+1"},
    {"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi there"}]},
    {"prompt": "print the sum of 3 and 4", "completion": "print(3 + 4)"},
    {"prompt": "x = 12", "completion": " y = x * 2"},
]


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("sft") / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def _sft_args(data, out, steps=3, extra=()):
    return ["--data.path", str(data), "--data.examples_per_step", "4", "--data.max_tokens", "40",
            "--run.max_steps", str(steps), "--optim.lr", "3e-3", "--optim.warmup_steps", "0",
            "--run.out_dir", str(out), "--run.progress", "false", "--run.device", "cpu", *extra]


def test_sft_step_lowers_loss_on_a_fixed_batch(sft_data, tmp_path):
    trainer = SFTTrainer(apply_overrides(SFTConfig(), _sft_args(sft_data, tmp_path)))
    batch = trainer.next_examples()
    losses = [trainer.train_step(batch)["loss"] for _ in range(3)]
    assert losses[2] < losses[1] < losses[0]
    trainer.close()


@register_verifier("ends_with_7_test")
def _ends_with_7(problem, completion):
    return RewardResult(reward=float(completion.strip().endswith("7")))


def test_rl_step_raises_logprob_of_rewarded_completions(tmp_path):
    rows = [{"prompt": "f(1)=", "verifier": "ends_with_7_test"}]
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = apply_overrides(RLConfig(), ["--data.path", str(data), "--data.heldout_path", str(data),
                                       "--data.prompts_per_step", "1", "--data.group_size", "4",
                                       "--optim.lr", "3e-3", "--optim.warmup_steps", "0", "--run.max_steps", "5",
                                       "--run.out_dir", str(tmp_path / "run"), "--run.progress", "false",
                                       "--run.device", "cpu"])
    trainer = RLTrainer(cfg)
    tok = trainer.tokenizer
    texts = [" 7", " 3", " 17", " 9"]
    group = []
    for t in texts:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        group.append(Completion(token_ids=ids, logprobs=[0.0] * len(ids), processed_logprobs=[0.0] * len(ids),
                                finish_reason="stop", text=t))
    roll = Rollout(positions=[0], indices=[0], outputs=[group], rewards=[[float(t.endswith("7")) for t in texts]],
                   infra=[[None] * len(texts)], gen_s=0.0, score_s=0.0)

    def seq_logprob(text):
        p = trainer.prompt_ids(0)
        c = tok(text, add_special_tokens=False)["input_ids"]
        ids = torch.tensor(p + c)
        with torch.no_grad():
            h = trainer.model(ids, torch.arange(len(ids)), torch.tensor([0, len(ids)], dtype=torch.int32))
            lp = torch.log_softmax(trainer.model.logits(h), -1)[len(p) - 1 : -1]
        return float(lp.gather(-1, torch.tensor(c)[:, None]).sum())

    before = {t: seq_logprob(t) for t in texts}
    adv, keep, stats = trainer.shaped_advantages(roll)
    assert stats["kept_samples"] == 4 and adv[0] > 0 > adv[1]
    metrics = trainer.train_on(roll, adv, keep, stats)
    assert metrics["skipped"] == 0.0
    after = {t: seq_logprob(t) for t in texts}
    delta = {t: after[t] - before[t] for t in texts}
    assert delta[" 7"] > 0 and delta[" 17"] > 0  # rewarded completions gain
    assert max(delta[" 3"], delta[" 9"]) < min(delta[" 7"], delta[" 17"]) and delta[" 3"] + delta[" 9"] < 0
    trainer.scorer.shutdown()
    trainer.close()


def test_rl_shared_prompts_train_like_unshared(tmp_path):
    """--algo.share_prompts: one RL update (2 groups, beta > 0 so the reference forward shares too) gives the
    loss, metrics and gradients of the unshared packing."""
    rows = [{"prompt": "f(1)=", "verifier": "ends_with_7_test"}, {"prompt": "g(22)=", "verifier": "ends_with_7_test"}]
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = [[" 7", " 3", " 17", " 9"], [" 1", " 27", " 37 7", " 2"]]
    results = {}
    for share in ("false", "true"):
        cfg = apply_overrides(RLConfig(), ["--data.path", str(data), "--data.heldout_path", str(data),
                                           "--data.prompts_per_step", "2", "--data.group_size", "4",
                                           "--loss.beta", "0.01", "--algo.share_prompts", share,
                                           "--optim.lr", "3e-3", "--optim.warmup_steps", "0",
                                           "--run.out_dir", str(tmp_path / share), "--run.progress", "false",
                                           "--run.device", "cpu"])
        trainer = RLTrainer(cfg)
        tok = trainer.tokenizer
        outputs = []
        for group in texts:
            ids = [tok(t, add_special_tokens=False)["input_ids"] for t in group]
            outputs.append([Completion(token_ids=i, logprobs=[-1.0] * len(i), processed_logprobs=[-1.0] * len(i),
                                       finish_reason="stop", text=t) for i, t in zip(ids, group)])
        roll = Rollout(positions=[0, 1], indices=[0, 1], outputs=outputs, gen_s=0.0, score_s=0.0,
                       rewards=[[float(t.endswith("7")) for t in group] for group in texts],
                       infra=[[None] * len(group) for group in texts])
        grads = {}
        step = trainer.optimizer_step

        def capture(loss_value, step=step, grads=grads, model=trainer.model):
            # Adam's first step is about lr * sign(grad): compare the gradients it is given, not its output
            grads.update({n: p.grad.detach().clone() for n, p in model.named_parameters()})
            return step(loss_value)

        trainer.optimizer_step = capture
        metrics = trainer.train_on(roll, *trainer.shaped_advantages(roll))
        results[share] = metrics, grads
        if share == "true":  # a step with a pair longer than share_max_tokens trains unshared
            assert trainer.pack([[5] * 10] * 2, [[6] * 3] * 2)[0].parents is not None
            trainer.cfg.algo.share_max_tokens = 12
            assert trainer.pack([[5] * 10] * 2, [[6] * 3] * 2)[0].parents is None
        trainer.scorer.shutdown()
        trainer.close()
    (m0, w0), (m1, w1) = results["false"], results["true"]
    assert m0["skipped"] == m1["skipped"] == 0.0 and abs(m0["loss"]) > 1e-4
    for k in m0:
        assert m1[k] == pytest.approx(m0[k], rel=1e-4, abs=1e-6), k
    for n in w0:
        torch.testing.assert_close(w1[n], w0[n], rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="do not combine"):
        RLTrainer(apply_overrides(RLConfig(), ["--data.path", str(data), "--algo.share_prompts", "true",
                                               "--gen.exact_logprobs", "true", "--run.out_dir", str(tmp_path / "x")]))


def _run_sft_subprocess(args, nproc=1, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    script = Path(__file__).resolve().parents[1] / "recipes" / "sft.py"
    if nproc == 1:
        cmd = [sys.executable, str(script), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(script), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _losses(out_dir):
    return [json.loads(line)["loss"] for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


def _final_weights(out_dir):
    from safetensors.torch import load_file

    return load_file(str(Path(out_dir) / "final" / "model.safetensors"))


def test_two_processes_equal_one(sft_data, tmp_path):
    one = _run_sft_subprocess(_sft_args(sft_data, tmp_path / "one", steps=2))
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run_sft_subprocess(_sft_args(sft_data, tmp_path / "two", steps=2), nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    torch.testing.assert_close(torch.tensor(_losses(tmp_path / "two")), torch.tensor(_losses(tmp_path / "one")),
                               rtol=1e-5, atol=1e-6)
    w1, w2 = _final_weights(tmp_path / "one"), _final_weights(tmp_path / "two")
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-5, msg=name)


def test_kill_and_resume_is_exact(sft_data, tmp_path):
    steps = 5
    ref = _run_sft_subprocess(_sft_args(sft_data, tmp_path / "ref", steps=steps))
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = Path(__file__).resolve().parents[1] / "recipes" / "sft.py"
    proc = subprocess.Popen([sys.executable, str(script), *_sft_args(sft_data, out, steps=steps,
                                                                    extra=("--run.save_every", "1"))],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        ckpts = list((out / "checkpoints").glob("step_0000000[2-9]")) if (out / "checkpoints").exists() else []
        if ckpts:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "final").exists(), "the run finished before it could be killed"
    resumed = _run_sft_subprocess(_sft_args(sft_data, out, steps=steps, extra=("--run.resume", "true")))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    by_step = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        by_step[row["step"]] = row["loss"]  # a step logged twice (before the kill, after resume) must agree
    assert [by_step[s] for s in range(1, steps + 1)] == _losses(tmp_path / "ref")
    w_ref, w_res = _final_weights(tmp_path / "ref"), _final_weights(out)
    for name in w_ref:
        assert torch.equal(w_ref[name], w_res[name]), name


def test_nan_loss_is_skipped_and_never_saved(sft_data, tmp_path, monkeypatch):
    import vt_core.trainer.sft as sft_mod

    real = sft_mod.linear_cross_entropy
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 1 else loss

    monkeypatch.setattr(sft_mod, "linear_cross_entropy", poisoned)
    trainer = SFTTrainer(apply_overrides(SFTConfig(), _sft_args(sft_data, tmp_path, steps=2)))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    m = trainer.train_step(trainer.next_examples())
    assert m["skipped"] == 1.0 and trainer.step == 0 and trainer.skipped_steps == 1
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    trainer.fit()
    weights = _final_weights(tmp_path)
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_bad_inputs_are_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n" + '{"prompt": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl, row 2, field 'completion'"):
        SFTTrainer(apply_overrides(SFTConfig(), _sft_args(bad, tmp_path / "o")))
    empty = tmp_path / "no_config"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        SFTTrainer(apply_overrides(SFTConfig(), _sft_args(bad, tmp_path / "o", extra=("--model.path", str(empty)))))
    import vt_core.model as vt_model
    from vt_core.data import tiny_model_config_path, tiny_tokenizer_path

    cfg = json.loads(tiny_model_config_path().read_text())
    cfg["vocab_size"] = 64
    small = tmp_path / "small"
    vt_model.from_config(cfg, seed=0).save(small)
    with pytest.raises(ValueError, match="vocab mismatch"):
        extra = ("--model.path", str(small), "--model.tokenizer", str(tiny_tokenizer_path()))
        SFTTrainer(apply_overrides(SFTConfig(), _sft_args(bad, tmp_path / "o", extra=extra)))


def test_sft_teacher_accuracy_reaches_the_embedded_examples_only(tmp_path, monkeypatch):
    from vt_core import tasks
    from vt_core.data import load_tokenizer, tiny_tokenizer_path
    from vt_core.trainer.sft import SFTDataConfig, load_sft_examples

    rows = tasks.generate_tasks("code", 400, 5, split="train")
    monkeypatch.setattr(tasks, "load_code_tasks", lambda split: [dict(r) for r in rows])
    tok = load_tokenizer(tiny_tokenizer_path())
    clean = load_sft_examples(SFTDataConfig(), tok)
    taught = load_sft_examples(SFTDataConfig(teacher_accuracy=0.75), tok)
    changed = sum(a.input_ids != b.input_ids for a, b in zip(clean, taught))
    assert len(clean) == len(taught) == 400 and 60 <= changed <= 140  # 25% of 400 = 100, sd 8.7
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        load_sft_examples(SFTDataConfig(teacher_accuracy=0.0), tok)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(ROWS[0]) + "\n")
    with pytest.raises(ValueError, match="d.jsonl the data is what it is"):
        load_sft_examples(SFTDataConfig(path=str(data), teacher_accuracy=0.5), tok)


def test_rl_code_runs_on_two_processes(tmp_path):
    """The main job under torchrun with 2 processes: every rank generates with the gathered full weights."""
    script = Path(__file__).resolve().parents[1] / "recipes" / "rl_code.py"
    args = ["--warmstart.steps", "2", "--warmstart.dir", str(tmp_path / "ws"), "--warmstart.max_examples", "200",
            "--run.max_steps", "1", "--eval.problems", "4", "--eval.samples", "2", "--data.prompts_per_step", "4",
            "--data.group_size", "2", "--run.out_dir", str(tmp_path / "rl"), "--run.progress", "false"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), *args]
    res = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "held-out pass@1 before:" in res.stdout and "held-out pass@1 after:" in res.stdout
    assert (tmp_path / "rl" / "final" / "config.json").is_file()


def test_shipped_warm_start_is_what_the_main_job_uses(load_recipe, tmp_path):
    """`torchrun recipes/rl_code.py` starts from vt_core/assets/warmstart_code: its recorded SFT settings are the
    recipe's defaults (so the shipped file is what those settings make), and it loads with the tiny tokenizer."""
    rl_code = load_recipe("rl_code")
    cfg = rl_code.embedded_default()
    shipped = rl_code.SHIPPED_WARMSTART
    assert json.loads((shipped / "warmstart.json").read_text())["stamp"] == rl_code.warm_start_stamp(cfg)
    assert rl_code.ensure_warm_start(cfg) == str(shipped)
    from vt_core import model as vt_model
    from vt_core.data import check_vocab, load_tokenizer

    model = vt_model.load(shipped)
    check_vocab(load_tokenizer(shipped), model.config.vocab_size)
    # Other settings never pick the shipped file up.
    cfg.warmstart.lr *= 2
    cfg.warmstart.dir = str(tmp_path / "ws")
    assert rl_code.warm_start_stamp(cfg) != rl_code.warm_start_stamp(rl_code.embedded_default())


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean"])
def test_rl_exact_logprobs_mode_has_no_sampler_trainer_gap(tmp_path, aggregation):
    """gen.exact_logprobs: the engine records the trainer's own logprobs and the training forward is the
    batch-invariant one, so on CPU in fp32 the ratio's denominator is exactly the trainer's logprob."""
    rows = [{"prompt": f"f({i})=", "verifier": "ends_with_7_test"} for i in range(3)]
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = apply_overrides(RLConfig(), ["--data.path", str(data), "--data.heldout_path", str(data),
                                       "--data.prompts_per_step", "3", "--data.group_size", "4",
                                       "--gen.max_new_tokens", "6", "--gen.exact_logprobs", "true",
                                       "--algo.drop_zero_variance", "false", "--loss.aggregation", aggregation,
                                       "--run.out_dir", str(tmp_path / "run"), "--run.progress", "false",
                                       "--run.device", "cpu"])
    trainer = RLTrainer(cfg)
    roll = trainer.rollout(trainer.next_problem_indices())
    roll.rewards = [[float(j % 2) for j in range(4)] for _ in roll.rewards]  # every group has variance
    adv, keep, stats = trainer.shaped_advantages(roll)
    metrics = trainer.train_on(roll, adv, keep, stats)
    assert metrics["skipped"] == 0.0 and metrics["sampler_logp_diff"] == 0.0
    trainer.scorer.shutdown()
    trainer.close()
