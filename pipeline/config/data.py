"""Config section naming the dataset an experiment reads.

The input size is a property of the network (``model.min_size`` / ``detector.min_size``), set
once there; data loaders resize to the network's size.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "prw"              # "prw" or "cuhk-sysu"
    root: str = "work/data/prw"       # dataset root as released (PRW/ or CUHK-SYSU/)
    flip: bool = True                 # random horizontal flip in training
    workers: int = 2                  # DataLoader worker processes
