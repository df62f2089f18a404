"""Data-parallel plumbing for ``torchrun``: process-group setup from the environment, a resumable
``DistributedSampler``, sharded exact evaluation, and the rank-0-writes rule.

``torchrun --nproc_per_node N -m forgetting_sam train ...`` sets ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`setup_distributed` reads them. A
plain ``python -m forgetting_sam train`` is a world of one and touches no process group. We
launch nothing ourselves: torchrun is the launcher (multi-node included).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

__all__ = [
    "DistEnv",
    "ResumableDistributedSampler",
    "ShardSampler",
    "all_reduce_sum",
    "barrier",
    "cleanup_distributed",
    "resolve_device",
    "setup_distributed",
]


@dataclass
class DistEnv:
    """Where this process sits: ``rank`` of ``world_size``, its ``device``, and whether it writes."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        """True on the one process that writes logs and checkpoints (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` → ``cuda:LOCAL_RANK`` if CUDA is present, else ``mps`` if present, else ``cpu``."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"invalid device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name} but CUDA is not available here; use device=cpu or auto")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def setup_distributed(device: str = "auto") -> DistEnv:
    """Join the process group described by torchrun's environment variables, if any.

    NCCL on CUDA, gloo on the CPU. Returns a world of one when ``WORLD_SIZE`` is unset or 1.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistEnv(0, 0, 1, dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    initialized_here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        initialized_here = True
    return DistEnv(dist.get_rank(), local_rank, dist.get_world_size(), dev, initialized_here)


def cleanup_distributed(env: DistEnv) -> None:
    """Leave the process group if :func:`setup_distributed` joined it."""
    if env.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """In-place sum over replicas (a no-op in a world of one); returns ``tensor``."""
    if env.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` that can start an epoch part-way, for mid-epoch resume.

    The order of an epoch depends only on ``(seed, epoch)`` (``set_epoch``), as in the parent;
    ``skip`` drops that many leading indices of this replica's share, so a run interrupted after
    ``k`` batches continues with batch ``k + 1`` of the same permutation. Works without a
    process group when ``num_replicas=1, rank=0``.
    """

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        super().set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        indices = list(super().__iter__())
        return iter(indices[self.skip:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.skip)


class ShardSampler(Sampler):
    """Every ``world_size``-th index starting at ``rank``, no padding: evaluation over all
    replicas then sees each example exactly once (sum the counts with :func:`all_reduce_sum`)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
