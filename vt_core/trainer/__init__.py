"""The lean training loop every stage uses (SFT, RL) and its process-level runtime (torchrun, FSDP2)."""

from vt_core.trainer.common import ModelSection, OptimSection, RunSection, TrainerCore

__all__ = ["ModelSection", "OptimSection", "RunSection", "TrainerCore"]
