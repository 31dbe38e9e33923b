"""torch.distributed plumbing: rank discovery, process group, DDP wrapping, metric reduction.

Launchers (``torchrun``, TorchDistributor, ``torch.multiprocessing`` in tests) own ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE`` and ``LOCAL_WORLD_SIZE``; :func:`dist_info_from_env` is the only
reader of them. The backend follows the device: NCCL for CUDA, gloo for CPU.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.distributed as dist
from torch import nn

from mtf.errors import NoGpuError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size={self.world_size}), got {self.rank}")
        if not 0 <= self.local_rank < self.local_world_size:
            raise ValueError(f"local_rank must be in [0, local_world_size="
                             f"{self.local_world_size}), got {self.local_rank}")

    @property
    def is_main(self) -> bool:
        """Global rank 0: the only rank with side effects (checkpoints, metrics, export)."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def dist_info_from_env(env: Mapping[str, str] | None = None) -> DistInfo:
    """Rank layout from the launcher's environment; a plain process is rank 0 of 1."""
    env = os.environ if env is None else env

    def read(name: str, default: int) -> int:
        raw = env.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") \
                from None

    world = read("WORLD_SIZE", 1)
    return DistInfo(rank=read("RANK", 0), local_rank=read("LOCAL_RANK", 0), world_size=world,
                    local_world_size=read("LOCAL_WORLD_SIZE", world))


def pick_device(requested: str, info: DistInfo) -> torch.device:
    """``auto`` -> this rank's GPU (``cuda:LOCAL_RANK``) when CUDA is available, else CPU."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise NoGpuError("train.device='cuda' but torch.cuda.is_available() is False (no GPU "
                         "or CUDA driver here): set train.device=auto or cpu, or run on a GPU "
                         "machine")
    return torch.device("cuda", info.local_rank % torch.cuda.device_count())


def configure_threads(num_threads: int, info: DistInfo, device: torch.device) -> None:
    """Split the CPU cores between the ranks of this node (0 = automatic)."""
    if device.type != "cpu":
        return
    if num_threads == 0:
        if not info.is_distributed:
            return
        num_threads = max(1, (os.cpu_count() or 1) // info.local_world_size)
    torch.set_num_threads(num_threads)


def init_distributed(info: DistInfo, device: torch.device) -> bool:
    """Join the process group when launched with several ranks; True if this call created it."""
    if not info.is_distributed or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    logger.info("joined process group: rank %d of %d, backend %s, device %s",
                info.rank, info.world_size, backend, device)
    return True


def destroy_distributed(created: bool) -> None:
    if created and dist.is_initialized():
        dist.destroy_process_group()


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def ddp_wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """DDP-wrap ``module`` when a multi-rank group is active (rank 0's weights are broadcast)."""
    if not is_active():
        return module
    device_ids = [device.index] if device.type == "cuda" and device.index is not None else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op in a single process); returns it."""
    if is_active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_str(value: str) -> str:
    """Rank 0's ``value`` on every rank (e.g. a generated run id)."""
    if not is_active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return str(box[0])


def barrier() -> None:
    if is_active():
        dist.barrier()
