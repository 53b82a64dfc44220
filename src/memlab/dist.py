"""Runs on several processes with PyTorch's own engine: `torchrun --nproc_per_node=N -m memlab train ...`
trains with DistributedDataParallel (gloo on CPU, nccl on GPUs), and `torchrun ... -m memlab eval ...` shares
an evaluation sweep's cells between the processes. Outside torchrun every function here is a no-op for one
process, so the single-process code paths are the same code."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def rank_world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) outside it."""
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError as e:
        raise ValueError(f"RANK / WORLD_SIZE must be integers (set by torchrun), got {e}") from None


def local_world() -> tuple[int, int]:
    """(local rank, processes on this machine)."""
    return int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))


def setup(device: str) -> tuple[str, bool]:
    """Join the process group torchrun describes (gloo for CPU, nccl for CUDA) and return (this rank's device,
    whether this call created the group). A CUDA device is this process's local GPU."""
    _, world = rank_world()
    if world == 1:
        return device, False
    local, _ = local_world()
    if device.startswith("cuda"):
        device = f"cuda:{local}"
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return device, False
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return device, True


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_sum(*values: float, device="cpu") -> list[float]:
    """Sums of the numbers over all processes (the numbers themselves in one process)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_max(value: int, device="cpu") -> int:
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def shard(n: int, rank: int, world: int) -> range:
    """The contiguous share of n items that process `rank` of `world` takes."""
    return range(rank * n // world, (rank + 1) * n // world)
