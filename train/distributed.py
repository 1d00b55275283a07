"""torch.distributed plumbing: one process per device, started by ``torchrun --nproc_per_node N -m train ...``.

Backend: gloo on CPU, nccl on CUDA. Every rank samples different archs (model_zoo's ArchDataset partitions its
stream by rank) and different data (streams seeded by rank); gradients are averaged by DDP; only rank 0 writes
files. Without torchrun's environment (``WORLD_SIZE`` unset or 1) everything runs in-process with no group.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ghn.errors import ConfigError

from .options import option

__all__ = ["DistInfo", "init_distributed", "shutdown", "all_gather_objects", "all_reduce_sum", "resolve_device"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` processes, and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` → ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; ``"cuda"`` gets the local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"device {name!r} is not a torch device ({e}); use cpu, cuda, cuda:1 or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device cuda requested but CUDA is not available; use {option('device', 'cpu')}")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def init_distributed(device: str) -> DistInfo:
    """Join the process group that torchrun set up (if any) and pick this rank's device.

    Raises:
        ConfigError: an unusable device name.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        # a generous timeout: rank 0 evaluates and writes checkpoints while the others wait at the next collective
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank, world_size, local_rank, dev)


def shutdown(info: DistInfo) -> None:
    """Leave the process group (after a final barrier, so no rank exits while another still talks to it)."""
    if info.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over ranks, in place (a no-op on a single process)."""
    if info.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (small objects only: RNG states and stream positions)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
