"""Training on several processes (CPU cores, GPUs or machines) with torch
DistributedDataParallel, started by ``torchrun``, which tells each process its place
through the environment (RANK, WORLD_SIZE, LOCAL_RANK).

Each process draws its own share of the epoch's P x K batches (``ShardedBatches``), so N
processes take N batches per optimiser step and average their gradients; only the first
process (rank 0) validates, writes the checkpoint and the stage outputs, and reports
progress (the MLflow run), while the others wait for it at the end of each epoch.
Without torchrun nothing here does anything: one process, as always.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

# rank 0 validates (and saves) while the others wait at a barrier: allow for a slow one
WAIT_FOR_RANK_0 = timedelta(hours=2)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def ranks_from_env() -> Ranks:
    """This process's place, as torchrun sets it; a single process without torchrun."""
    try:
        return Ranks(
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)),
        )
    except ValueError as error:
        raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers: {error}") from None


def process_device(device: torch.device, ranks: Ranks) -> torch.device:
    """One GPU per process on a machine: cuda -> cuda:LOCAL_RANK."""
    if device.type == "cuda" and ranks.distributed:
        return torch.device("cuda", ranks.local_rank)
    return device


def start(ranks: Ranks, device: torch.device) -> None:
    """Join the process group (NCCL on GPUs, gloo on CPUs); nothing for one process."""
    if ranks.distributed and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=WAIT_FOR_RANK_0)


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wait_for_all(ranks: Ranks) -> None:
    if ranks.distributed:
        dist.barrier()


class ShardedBatches(Sampler):
    """This process's share of a batch sampler's batches: batch i goes to rank i mod N.
    Every rank gets the same number (the last incomplete round is dropped), so none waits
    forever for a gradient the others never send. ``set_epoch`` passes through."""

    def __init__(self, batches: Sampler, ranks: Ranks):
        self.batches = batches
        self.ranks = ranks

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batches, "set_epoch"):
            self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches) // self.ranks.world  # type: ignore[arg-type]

    def __iter__(self) -> Iterator:
        per_rank = len(self)
        for index, batch in enumerate(self.batches):
            if index >= per_rank * self.ranks.world:
                return
            if index % self.ranks.world == self.ranks.rank:
                yield batch
