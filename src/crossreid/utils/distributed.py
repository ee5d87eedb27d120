"""Process-group helpers for multi-process training under ``torchrun``.

``torchrun --nproc_per_node N -m crossreid train ...`` (or ``python -m torch.distributed.run``)
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`setup_distributed` reads them and joins the process group (``nccl`` on CUDA, ``gloo``
on CPU). Without them training runs as a single process and every helper here is a no-op.
Only rank 0 writes logs and checkpoints and evaluates; the others wait at :func:`barrier`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from crossreid.errors import ConfigError

__all__ = [
    "DistInfo",
    "all_reduce_mean",
    "barrier",
    "cleanup_distributed",
    "distributed_env",
    "setup_distributed",
]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def distributed_env() -> DistInfo:
    """Rank, world size and local rank from the ``torchrun`` environment (defaults: 0, 1, 0)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} / WORLD_SIZE={world} are inconsistent")
    return DistInfo(rank, world, _env_int("LOCAL_RANK", 0))


def setup_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched by ``torchrun`` with ``WORLD_SIZE > 1``.

    ``device_type`` is ``"cpu"`` (gloo) or ``"cuda"`` (nccl). A process group that already
    exists (e.g. created by the caller) is reused and left alone by
    :func:`cleanup_distributed`.
    """
    info = distributed_env()
    if not info.is_distributed or dist.is_initialized():
        return info
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    return DistInfo(info.rank, info.world_size, info.local_rank, initialized_here=True)


def cleanup_distributed(info: DistInfo) -> None:
    """Destroy the process group if :func:`setup_distributed` created it."""
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op in a single-process run)."""
    if info.is_distributed and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Average a tensor over processes (for logging losses); returns it unchanged if single."""
    if not info.is_distributed or not dist.is_initialized():
        return values
    values = values.detach().clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / info.world_size
