"""Config of a student run (stage two): data, network, distillation terms, training, and which
teacher cache it learns from."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.config.data import DataConfig
from pipeline.config.distill import DistillConfig
from pipeline.config.model import ModelConfig


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 5
    lr: float = 0.003                  # base lr (SGD) for batch_size images per step
    momentum: float = 0.9              # SGD momentum (AdamW: beta1)
    weight_decay: float = 5e-4
    optimizer: Literal["sgd", "adamw"] = "sgd"
    warmup_iters: int = 1000           # linear warm-up from lr * warmup_factor, in iterations
    warmup_factor: float = 0.001
    schedule: Literal["step", "cosine"] = "step"
    milestones: tuple[int, ...] = (16,)  # epochs after which lr *= gamma ("step")
    gamma: float = 0.1
    grad_clip: float | None = 10.0     # max global gradient norm; null: no clipping
    amp: bool = False                  # bf16 autocast on CUDA
    seed: int = 0                      # model init, data order, flips
    device: str = "cpu"                # "cpu", "cuda", "cuda:1"
    log_every: int = 1                 # steps between host syncs of the loss log (CSV has all)


@dataclass(frozen=True)
class StudentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    teacher_config: str = "configs/teacher/prw.yaml"  # teacher YAML whose cache this run uses
    cache: str | None = None           # explicit cache file; overrides teacher_config
    run_dir: str = "work/runs/student"
