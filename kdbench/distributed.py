"""DistributedDataParallel under torchrun: one run on several processes (GPUs, or CPUs with gloo).

Every rank executes the same grid in the same order; rank 0 decides which cells to run (records,
locks) and broadcasts the decision, trains in lockstep with the others, and alone writes records,
checkpoints, metrics and progress. The recipe's `batch_size` is the global batch: each rank gets
`batch_size / world_size` images per step from its shard of the device-resident loader.
"""

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import UsageError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun group (rank 0 of 1 without one). Passed down explicitly
    (in a `RunContext`); every collective is a method, a no-op for one process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def device_for(self, device: torch.device) -> torch.device:
        """This rank's device: cuda:LOCAL_RANK under torchrun on GPUs."""
        if device.type == "cuda" and self.active:
            return torch.device("cuda", self.local_rank)
        return device

    def per_rank_batch(self, global_batch: int) -> int:
        if global_batch % self.world_size:
            raise UsageError(f"recipe.batch_size {global_batch} is not divisible by the world size "
                             f"{self.world_size}; it is the global batch, split evenly over the ranks")
        return global_batch // self.world_size

    def broadcast(self, obj):
        """Rank 0's value of `obj` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def any_rank(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if it is true on some rank (stop requests, failures)."""
        if not self.active:
            return flag
        t = torch.tensor([1 if flag else 0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def all_reduce_(self, tensor: torch.Tensor, op=None) -> torch.Tensor:
        if self.active:
            dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
        return tensor

    def barrier(self):
        if self.active:
            dist.barrier()


SINGLE = DistInfo()
TIMEOUT_ENV, DEFAULT_TIMEOUT_S = "KDBENCH_DIST_TIMEOUT_S", 2 * 3600


def collective_timeout() -> timedelta:
    """How long a collective may wait: 2 h, or KDBENCH_DIST_TIMEOUT_S seconds. Long, because rank 0
    may wait for a teacher lock held by another job while the other ranks wait in a broadcast, and
    NCCL's default (10 min) would kill the group."""
    text = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise UsageError(f"{TIMEOUT_ENV}={text!r}: must be a positive number of seconds")
    return timedelta(seconds=seconds)


def init_from_env(device_name: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (SINGLE without one)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    if not dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = device_name != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=collective_timeout())
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shutdown():
    if dist.is_initialized():
        dist.destroy_process_group()

