"""The verifier self-check before a run (issue 14): known-right scores 1 and known-wrong 0 for every built-in
verifier; a broken sandbox (the launcher made unexecutable) or a lying verifier stops the RL trainer, and the
main job under torchrun, before its first step with a message naming the cause. Also: an RL step where most
rewards are infrastructure failures stops, and a group with one is not trained on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vt_core.config import apply_overrides
from vt_core.rewards import selfcheck
from vt_core.rewards.base import RewardResult
from vt_core.rewards.infra import InfrastructureFailure
from vt_core.rewards.registry import register_verifier, unregister_verifier
from vt_core.rewards.selfcheck import VerifierSelfCheckFailed, self_check, verifiers_of
from vt_core.sandbox import isolation
from vt_core.sandbox.isolation import build_launcher
from vt_core.trainer.rl import RLConfig, RLTrainer, Rollout

CODE_ROW = {"prompt": "f(2)=4\n```python\ndef f(x):\n    return", "verifier": "code", "fn_name": "f",
            "tests": {"fn_name": "f", "inputs": [[2]], "outputs": [4]},
            "response_prefix": "```python\ndef f(x):\n    return"}


@pytest.fixture
def broken_launcher(tmp_path, monkeypatch):
    """A launcher that exists in the cache but cannot be executed (VT_SANDBOX_CACHE points at it)."""
    monkeypatch.setenv("VT_SANDBOX_CACHE", str(tmp_path / "cache"))
    launcher = build_launcher()
    os.chmod(launcher, 0o600)
    isolation(refresh=True)
    yield launcher
    monkeypatch.undo()
    assert isolation(refresh=True).active


def test_builtin_verifiers_pass_in_well_under_a_second_each():
    times = self_check(["code", "math", "stem", "instruct"])
    assert set(times) == {"code", "math", "stem", "instruct"}
    assert times["code"] < 5.0 and times["stem"] < 0.5 and times["instruct"] < 0.5  # math starts its worker


def test_verifiers_of_names_what_problems_use():
    assert verifiers_of([{"verifier": "code"}, {"domain": "math"}, {"verifier": "code"}]) == ["code", "math"]


def test_unexecutable_launcher_fails_the_self_check_naming_it(broken_launcher):
    with pytest.raises(VerifierSelfCheckFailed) as err:
        self_check(["code"])
    msg = str(err.value)
    assert "self-check failed for 'code'" in msg and "Permission denied" in msg and str(broken_launcher) in msg
    assert "known-right completion scored 0 (infrastructure failure" in msg


def test_a_verifier_that_rewards_wrong_answers_fails(monkeypatch):
    register_verifier("test-yes", lambda problem, completion: RewardResult(1.0))
    monkeypatch.setitem(selfcheck.KNOWN, "test-yes", ({"verifier": "test-yes"}, "right", "wrong"))
    try:
        with pytest.raises(VerifierSelfCheckFailed, match="'test-yes'.*known-wrong one 1; expected 1 and 0"):
            self_check(["test-yes"])
    finally:
        unregister_verifier("test-yes")


def _rl_config(tmp_path, rows) -> RLConfig:
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return apply_overrides(RLConfig(), ["--data.path", str(data), "--data.heldout_path", str(data),
                                        "--data.prompts_per_step", "2", "--data.group_size", "2",
                                        "--run.max_steps", "1", "--run.out_dir", str(tmp_path / "run"),
                                        "--run.progress", "false", "--run.device", "cpu"])


def test_rl_trainer_stops_before_its_first_step_on_a_broken_sandbox(tmp_path, broken_launcher):
    with pytest.raises(VerifierSelfCheckFailed, match="'code'.*Permission denied"):
        RLTrainer(_rl_config(tmp_path, [CODE_ROW]))


def test_rl_step_with_most_rewards_infra_stops_and_a_group_with_one_is_dropped(tmp_path):
    from vt_core.generation import Completion

    trainer = RLTrainer(_rl_config(tmp_path, [CODE_ROW, CODE_ROW]))
    try:
        group = [Completion(token_ids=[5, 6], logprobs=[0.0, 0.0], processed_logprobs=[0.0, 0.0],
                            finish_reason="stop", text=" x") for _ in range(2)]
        cause = ("sandbox setup failed: vt-sandbox-launcher: unshare: Operation not permitted", "stderr tail")
        roll = Rollout(positions=[0, 1], indices=[0, 1], outputs=[group, group], rewards=[[1.0, 0.0], [1.0, 0.0]],
                       infra=[[None, None], [cause, None]], gen_s=0.0, score_s=0.0)
        adv, keep, stats = trainer.shaped_advantages(roll)
        assert stats["infra_error_frac"] == 0.25 and keep.tolist() == [True, True, False, False]
        roll.infra = [[cause, None], [cause, cause]]
        expected = "RL step 0: 3 of 4 rewards.*unshare.*\nits stderr: stderr tail"
        with pytest.raises(InfrastructureFailure, match=expected):
            trainer.shaped_advantages(roll)
    finally:
        trainer.scorer.shutdown()
        trainer.close()


def test_main_job_stops_at_once_with_an_unexecutable_launcher(tmp_path, broken_launcher):
    script = Path(__file__).resolve().parents[1] / "recipes" / "rl_code.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", str(script),
           "--run.out_dir", str(tmp_path / "rl"), "--run.progress", "false"]
    res = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert res.returncode != 0
    assert "VerifierSelfCheckFailed: verifier self-check failed for 'code'" in res.stderr
    assert f"Permission denied: '{broken_launcher}'" in res.stderr
    assert "held-out pass@1" not in res.stdout  # not even the evaluation before the first step ran
    assert not (tmp_path / "rl" / "metrics.jsonl").read_text().strip()
