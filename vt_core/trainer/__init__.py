"""The lean training loop every stage uses (SFT, RL) and its process-level runtime (torchrun, FSDP2)."""

from vt_core.trainer.common import OptimConfig, RunConfig, TrainerCore, TrainModelConfig

__all__ = ["OptimConfig", "RunConfig", "TrainModelConfig", "TrainerCore"]
