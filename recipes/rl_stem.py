"""RL on STEM (physics / chemistry: multiple choice and numbers with units), starting from a given checkpoint.

    torchrun recipes/rl_stem.py               # embedded default: tiny model, shipped STEM tasks, CPU
    torchrun --nproc_per_node=8 recipes/rl_stem.py --model.path runs/rl_code/final --data.path stem.jsonl \
        --data.heldout_path gpqa.jsonl --gen.max_new_tokens 16384 --run.max_steps 200

The same recipe as recipes/rl_math.py (RLDomainConfig, warm start by SFT on the STEM train split when no
--model.path is given) with data.domain = "stem". --help prints every option.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _rl_math():
    spec = importlib.util.spec_from_file_location("recipe_rl_math", Path(__file__).resolve().parent / "rl_math.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> dict:
    return _rl_math().main(argv, domain="stem")


if __name__ == "__main__":
    main()
