"""Distributed start-up (the launcher's world, or a world of one) and the small collectives the
loop uses."""
from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from shards.device import configure_deepspeed_accelerator, cuda_available, ensure_distributed_env, free_port


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(timeout_s: float = 1800.0) -> Dist:
    """Join the process group the launcher describes (or a world of one). Idempotent. A collective
    waits `timeout_s` for the other ranks, then raises (gloo: "Timed out waiting ...")."""
    own_world = ensure_distributed_env()
    configure_deepspeed_accelerator()   # a no-op after the `trainer` command's own call; here for library callers
    import deepspeed
    from deepspeed.accelerator import get_accelerator
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda_available():
        get_accelerator().set_device(local_rank)
    elif "OMP_NUM_THREADS" not in os.environ and int(os.environ.get("LOCAL_SIZE", 1)) > 1:
        # CPU ranks sharing a machine (LOCAL_SIZE from the deepspeed launcher): split its cores,
        # or their OpenMP threads spin against each other (tens of times slower).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["LOCAL_SIZE"])))
    # DeepSpeed's engine reduces gradients over groups of its own (groups._clone_world_group), made
    # with new_group() and no timeout: torch gives those its module default (30 min for gloo), not
    # the world group's, so a rank frozen before the gradient all-reduce would hang the others for
    # 30 min whatever --dist-timeout says. The default is read when a group is made: set it first.
    from torch.distributed import distributed_c10d
    distributed_c10d.default_pg_timeout = datetime.timedelta(seconds=timeout_s)
    for attempt in range(5):
        if torch.distributed.is_initialized():
            break
        try:
            deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name(), verbose=False,
                                       timeout=datetime.timedelta(seconds=timeout_s))
        except torch.distributed.DistNetworkError as e:
            # A world of one picked a free port that another process took before the store bound it
            # (seen with training jobs started side by side): pick another. A launcher's port is its own.
            if not own_world or "EADDRINUSE" not in str(e) or attempt == 4:
                raise
            os.environ["MASTER_PORT"] = str(free_port())
    dist = Dist(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank)
    unlink_shm_allreduce_buffer(dist.rank, dist.world_size)
    return dist


def unlink_shm_allreduce_buffer(rank: int, world_size: int) -> None:
    """DeepSpeed's CPU ranks all on one machine (LOCAL_SIZE = world size) share a POSIX shared-memory
    buffer per rank, /dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank> (about 40 MB),
    that nothing ever unlinks: every launched run left them behind until /dev/shm (RAM) filled and
    the kernel's OOM killer ended a rank. Every rank maps every peer's buffer while DeepSpeed
    initialises; after a barrier each rank unlinks its own name, and the mappings live on."""
    if cuda_available() or not sys.platform.startswith("linux") or os.environ.get("LOCAL_SIZE") != str(world_size):
        return
    torch.distributed.barrier()
    name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{rank}")
    Path("/dev/shm", name).unlink(missing_ok=True)


def mean_over_ranks(values: dict, device, world_size: int) -> dict:
    """Average logged metrics over ranks (every rank calls this at the same steps)."""
    if not values:
        return {}
    names = sorted(values)
    t = torch.tensor([float(values[n]) for n in names], dtype=torch.float64, device=device)
    if world_size > 1:
        torch.distributed.all_reduce(t)
        t /= world_size
    return dict(zip(names, t.tolist()))


def sum_over_ranks(count: int, device, world_size: int) -> int:
    t = torch.tensor([count], dtype=torch.int64, device=device)
    if world_size > 1:
        torch.distributed.all_reduce(t)
    return int(t.item())


def any_rank(flag: bool, device, world_size: int) -> bool:
    """True on every rank when `flag` is true on any."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    if world_size > 1:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())
