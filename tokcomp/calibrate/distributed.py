"""Running the rate search under `torchrun --nproc_per_node N`.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT. The search
joins (or starts) the default process group: gloo on CPU, NCCL on GPU. Every rank
loads the same sample list and takes its own equal shard; gradients of the rate
logits are averaged by DistributedDataParallel, so every rank ends with the same
logits; the read-out is broadcast from rank 0 all the same. Only rank 0 writes files
(`is_main_process()`).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def ensure_process_group() -> bool:
    """Join the torchrun process group if launched by torchrun; True when distributed."""
    if not dist.is_available():
        return False
    if dist.is_initialized():
        return dist.get_world_size() > 1
    if not launched_by_torchrun():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    atexit.register(_shutdown)
    return True


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0, and in a plain (non-torchrun) run. Call this before writing files.

    Also true before the process group exists: RANK from torchrun decides then.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def shard(items: Sequence[T]) -> list[T]:
    """This rank's equal share of `items` (strided; the remainder is left out so every rank steps alike)."""
    size, me = world_size(), rank()
    per_rank = len(items) // size
    return list(items[me::size][:per_rank])


def device() -> torch.device:
    """Where the search runs: this rank's GPU when there is one (NCCL), else the CPU (gloo)."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if dist.is_available() and dist.is_initialized() and dist.get_backend() != "nccl":
        return torch.device("cpu")  # a gloo group exchanges CPU tensors
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))


def broadcast_ints(values: list[int]) -> list[int]:
    """Rank 0's list on every rank (same length everywhere)."""
    if world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.int64, device=device())
    dist.broadcast(tensor, src=0)
    return tensor.tolist()


def mean_across_ranks(value: float) -> float:
    if world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device())
    dist.all_reduce(tensor)
    return tensor.item() / world_size()


def min_across_ranks(value: int) -> int:
    if world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())
