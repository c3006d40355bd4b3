"""Process-group set-up from torchrun's environment, and the all-reduces the loops share."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

RENDEZVOUS_TIMEOUT = datetime.timedelta(minutes=10)


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int
    local_size: int
    node_rank: int
    device: torch.device

    @property
    def is_master(self) -> bool:
        return self.rank == 0

    @property
    def is_node_master(self) -> bool:
        return self.local_rank == 0


def init(device: str = "auto") -> World:
    """Join torchrun's process group (NCCL on GPUs, gloo on CPUs); a plain `python -m trainer` is a world of 1."""
    env = os.environ
    rank, size = int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1))
    local_rank, local_size = int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", 1))
    node_rank = int(env.get("GROUP_RANK", 0))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        target = torch.device("cuda", local_rank)
    else:
        target = torch.device("cpu")
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=RENDEZVOUS_TIMEOUT,
                                device_id=target if use_cuda else None)
    return World(rank, size, local_rank, local_size, node_rank, target)


def backend() -> str | None:
    """The process group's backend ("nccl", "gloo"); None in a world of 1."""
    return dist.get_backend() if dist.is_initialized() else None


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
