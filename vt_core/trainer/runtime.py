"""Process-level setup shared by every stage: torch.distributed under torchrun, devices, seeds, FSDP2.

One process per device. Launched by torchrun with WORLD_SIZE > 1, the process group is initialised
(nccl on GPU, gloo on CPU) and the model is sharded with FSDP2 (``fully_shard`` per decoder layer, then
the root); parameters stay fp32 (the master weights) and, where bf16 compute is asked for on GPU,
``MixedPrecisionPolicy`` casts them for the forward/backward and reduces gradients in fp32.
A single process runs the same code without a process group.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class Runtime:
    """Where this process runs: rank, world size, device, compute dtype."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    compute_dtype: torch.dtype

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a list of floats over all processes (float64 on the wire)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return t.tolist()

    def all_reduce_max(self, value: int) -> int:
        """The largest ``value`` over all processes."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def gather_objects(self, obj) -> list:
        """Every process's ``obj``, in rank order (``[obj]`` on one process)."""
        if not self.distributed:
            return [obj]
        parts = [None] * self.world_size
        dist.all_gather_object(parts, obj)
        return parts

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every process."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def print(self, *args) -> None:
        if self.is_main:
            print(*args, flush=True)


def setup_runtime(device: str = "auto", bf16: bool = True) -> Runtime:
    """Initialise torch.distributed when launched by torchrun with more than one process.

    device: "auto" (cuda if available), "cpu" or "cuda". bf16: compute in bf16 on GPU (CPU stays fp32).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for but no CUDA device is visible")
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    dtype = torch.bfloat16 if (use_cuda and bf16) else torch.float32
    return Runtime(rank=rank, world_size=world, local_rank=local, device=dev, compute_dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def shard_model(model: torch.nn.Module, rt: Runtime) -> torch.nn.Module:
    """FSDP2-shard ``model`` (a vt_core CausalLM) when distributed; a no-op on one process."""
    if not rt.distributed:
        return model
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=rt.compute_dtype, reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def full_state_dict(model: torch.nn.Module, rt: Runtime, all_ranks: bool = False) -> dict[str, torch.Tensor]:
    """Unsharded copy of the model's parameters (collective under FSDP2: call on every rank).

    By default on CPU and on rank 0 only (other ranks get an empty dict: what saving needs); with
    ``all_ranks`` every rank gets the full tensors on its device (what per-rank generation needs).
    """
    if not rt.distributed:
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=not all_ranks)
    return get_model_state_dict(model, options=options)


def cleanup(rt: Runtime) -> None:
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()
