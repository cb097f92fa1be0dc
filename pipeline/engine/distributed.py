"""torchrun support: one code path for one device and for many.

Under ``torchrun`` (env ``WORLD_SIZE`` > 1) :func:`init_distributed` starts the process group
(NCCL on CUDA, Gloo on CPU) and returns this process's device; otherwise it does nothing.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def init_distributed(device: str = "cpu") -> tuple[torch.device, bool]:
    """Start the process group when launched by torchrun; return (device, distributed)."""
    device = torch.device(device)
    if env_world_size() <= 1:
        return device, False
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device, True


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
