"""The four-stage pipeline (recipes/pipeline.py --quick): a short run stops after a middle stage, a second
run resumes there and finishes; the single-stage recipes run on their own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vt_core.tasks import generate_tasks, load_tasks, write_task_file



@pytest.fixture(scope="module")
def small_code_tasks(tmp_path_factory):
    """A few code training problems (the full embedded train split takes seconds to generate)."""
    path = tmp_path_factory.mktemp("code") / "code_train.jsonl"
    write_task_file(path, generate_tasks("code", 6, seed=99, exclude=load_tasks("code", "heldout")))
    return str(path)


def test_quick_pipeline_stops_and_resumes_from_a_middle_stage(tmp_path, small_code_tasks, capsys, load_recipe):
    pipeline = load_recipe("pipeline")
    out = tmp_path / "pipe"
    common = ["--quick", "--pipeline.out_dir", str(out), "--pipeline.sft_domains", "math,stem",
              "--rl_code.data.path", small_code_tasks, "--eval.domains", "math,instruct"]
    state = pipeline.main(common + ["--pipeline.stop_after", "rl_math"])
    assert list(state["stages"]) == ["sft1", "sft2", "rl_math"]
    first = capsys.readouterr().out
    assert "fused 3 per-subdomain best checkpoints" in first  # math probing set: 3 subdomains
    assert first.count("pass@1") >= 4  # base + one table per stage
    probe_best = json.loads((out / "sft2" / "probe_best" / "best.json").read_text())
    assert sorted(probe_best) == ["algebra", "arithmetic", "number_theory"]
    done_at = {s: v["finished_at"] for s, v in state["stages"].items()}

    state = pipeline.main(common)
    log = capsys.readouterr().out
    assert list(state["stages"]) == list(pipeline.STAGES)
    for s in ("sft1", "sft2", "rl_math"):
        assert f"[pipeline] {s}: done earlier" in log and state["stages"][s]["finished_at"] == done_at[s]
    assert "=== sft1" not in log and "=== rl_code (from " + str(out / "rl_math" / "final") in log
    for s in ("rl_code", "rl_stem", "distill", "instruct"):
        output = Path(state["stages"][s]["output"])
        assert (output / "config.json").is_file()
        assert set(state["stages"][s]["eval"]) == {"math", "instruct"}
    assert state["stages"]["instruct"]["output"] == str(out / "instruct" / "rl" / "final")
    assert (out / "distill" / "selection_stats.json").is_file()
    saved = json.loads((out / "pipeline_state.json").read_text())
    assert list(saved["stages"]) == list(pipeline.STAGES)

    with pytest.raises(ValueError, match="unknown stage"):
        pipeline.main(common + ["--pipeline.stop_after", "rl_bio"])


def test_rl_stem_recipe_runs_from_a_checkpoint(tmp_path, load_recipe):
    from vt_core import model as vt_model
    from vt_core.data import load_tokenizer, tiny_model_config_path, tiny_tokenizer_path

    start = tmp_path / "start"
    vt_model.from_config(tiny_model_config_path(), seed=3).save(start)
    load_tokenizer(tiny_tokenizer_path()).save_pretrained(start)
    result = load_recipe("rl_stem").main([
        "--model.path", str(start), "--run.out_dir", str(tmp_path / "rl"), "--run.max_steps", "1",
        "--run.progress", "false", "--data.prompts_per_step", "2", "--data.group_size", "2",
        "--gen.max_new_tokens", "8", "--eval.problems", "2", "--eval.samples", "2"])
    assert set(result) == {"before", "after", "last"} and result["after"]["problems"] == 2
    assert (tmp_path / "rl" / "final" / "config.json").is_file()
