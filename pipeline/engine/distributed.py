"""torchrun support: one code path for one device and for many.

Under ``torchrun`` (env ``WORLD_SIZE`` > 1) :func:`init_distributed` starts the process group
(NCCL on CUDA, Gloo on CPU) and returns this process's device; otherwise it does nothing.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from pipeline.config import ConfigError


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def check_device(name: str, key: str) -> torch.device:
    """``name`` ("cpu", "cuda", "cuda:1") as a device this machine has; a ConfigError naming
    the setting ``key`` (e.g. "detector.device") otherwise."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key}={name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={name} but CUDA is not available here: use "
                          f"--set {key}=cpu") from None
    if device.type == "cuda" and device.index is not None and \
            device.index >= torch.cuda.device_count():
        raise ConfigError(f"{key}={name} but this machine has {torch.cuda.device_count()} "
                          "CUDA device(s)")
    return device


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
