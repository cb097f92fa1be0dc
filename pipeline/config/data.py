"""Config section naming the dataset an experiment reads.

The input size is a property of the network (``model.min_size`` / ``detector.min_size``), set
once there; data loaders resize to the network's size.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SyntheticWorldConfig:
    """A synthetic world in the dataset's on-disk layout, made at ``data.root`` by the commands
    of stage one when that folder is missing (the options of ``cli.py make-synthetic``)."""
    identities: int = 60
    images: int = 240
    size: str = "320x240"             # WIDTHxHEIGHT
    cameras: int | None = None        # null: the style's camera count (3 for default)
    seed: int = 0
    style: str = "default"            # a preset of pipeline/data/synthetic/styles.py


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "prw"              # "prw" or "cuhk-sysu"
    root: str = "work/data/PRW"       # dataset root as released (PRW/ or CUHK-SYSU/)
    flip: bool = True                 # random horizontal flip in training
    workers: int = 2                  # DataLoader worker processes
    synthetic: SyntheticWorldConfig | None = None  # null: a real release, never generated
