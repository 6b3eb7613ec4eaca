"""Training on several processes (torchrun): joining the process group, and what the processes share."""

import os

import torch
import torch.distributed as dist


def start() -> tuple[int, int, int]:
    """(rank, world size, local rank) under torchrun, having joined its process group; (0, 1, 0) alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def reduce(tensor: torch.Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM) -> torch.Tensor:
    """Sum (or another reduction) over processes, in place; a no-op in one process."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op)
    return tensor


def first(values: list, local_rank: int) -> list:
    """The first process's `values` (picklable objects), on every process: for a decision that all take together."""
    dist.broadcast_object_list(values, device=torch.device("cuda", local_rank) if dist.get_backend() == "nccl"
                               else None)
    return values
