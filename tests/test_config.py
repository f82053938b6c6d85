from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from vt_core.config import apply_overrides, format_config, parse_cli, save_config, to_dict


@dataclass
class Optim:
    """Optimizer section."""

    lr: float = 1e-4
    warmup: int = 10
    betas: tuple[float, ...] = (0.9, 0.95)


@dataclass
class Cfg:
    """Top-level config."""

    optim: Optim = field(default_factory=Optim)
    name: str = "run"
    kind: Literal["grpo", "rloo"] = "grpo"
    beta: Optional[float] = None
    compile: bool = False


def test_overrides_parse_by_annotation():
    cfg = apply_overrides(
        Cfg(), ["--optim.lr", "3e-4", "--optim.betas", "0.8,0.9", "--kind", "rloo", "--beta=0.01", "--compile"]
    )
    assert cfg.optim.lr == 3e-4 and cfg.optim.betas == (0.8, 0.9)
    assert cfg.kind == "rloo" and cfg.beta == 0.01 and cfg.compile is True
    cfg = apply_overrides(cfg, ["--beta", "none", "--compile", "false"])
    assert cfg.beta is None and cfg.compile is False


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--optim.lrr", "1"], "unknown option --optim.lrr"),
        (["--nope.lr", "1"], "no section 'nope'"),
        (["--optim.warmup", "ten"], "--optim.warmup: expected int"),
        (["--kind", "ppo"], "not one of grpo, rloo"),
        (["--optim"], "is a section"),
        (["--name"], "needs a value"),
        (["stray"], "unexpected argument"),
    ],
)
def test_bad_options_name_the_problem(argv, match):
    with pytest.raises(ValueError, match=match):
        apply_overrides(Cfg(), argv)


def test_parse_cli_exits_with_message():
    with pytest.raises(SystemExit, match="unknown option"):
        parse_cli(Cfg(), ["--bogus", "1"])


def test_print_and_save(tmp_path):
    cfg = Cfg()
    text = format_config(cfg)
    assert "--optim.lr = 0.0001" in text and "--kind = 'grpo'" in text
    save_config(cfg, tmp_path / "c.json")
    assert (tmp_path / "c.json").read_text().strip().startswith("{")
    assert to_dict(cfg)["optim"]["betas"] == [0.9, 0.95]


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--algo.estimator", "ppo"], r"--algo.estimator: 'ppo' is not one of grpo, dr_grpo, rloo, reinforce_pp"),
        (["--data.domain", "bio"], r"--data.domain: 'bio' is not one of code, math, stem, instruct"),
        (["--run.device", "tpu"], r"--run.device: 'tpu' is not one of auto, cpu, cuda"),
    ],
)
def test_recipe_choices_are_checked_on_the_command_line(argv, match):
    """Enum-like options of the stage configs are Literal types: a bad value names the option and its choices."""
    from vt_core.trainer.rl import RLConfig

    with pytest.raises(ValueError, match=match):
        apply_overrides(RLConfig(), argv)
    with pytest.raises(SystemExit, match="error: " + match):
        parse_cli(RLConfig(), argv)


def test_stage_choices_parse_into_their_fields():
    from vt_core.trainer.distill import DistillConfig

    cfg = apply_overrides(DistillConfig(), ["--distill.mode", "kl", "--distill.kind", "jsd", "--data.overflow", "error",
                                            "--sample.domains", "math,stem", "--run.device", "cpu"])
    assert (cfg.distill.mode, cfg.distill.kind, cfg.data.overflow) == ("kl", "jsd", "error")
    assert cfg.sample.domains == ["math", "stem"] and cfg.run.device == "cpu"
    with pytest.raises(ValueError, match=r"--sample.domains: 'bio' is not one of code, math, stem, instruct"):
        apply_overrides(DistillConfig(), ["--sample.domains", "math,bio"])


def test_domain_choices_are_the_embedded_task_domains():
    from typing import get_args

    from vt_core.tasks import DOMAINS
    from vt_core.trainer.common import Domain

    assert get_args(Domain) == DOMAINS
