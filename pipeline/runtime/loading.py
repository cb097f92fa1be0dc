"""Loading a searcher for use: a student from its checkpoint, or the two-step teacher from its
YAML config (its ``out_dir`` holds both trained parts); which kind a MODEL argument names and
the fingerprint of its weights (their CONTENT, so a gallery notices a retrained checkpoint at
the same path)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from cache.key import file_fingerprint
from pipeline.config import load_config
from pipeline.config.teacher import TeacherConfig
from pipeline.runtime.searcher import Searcher
from pipeline.runtime.types import ModelInfo
from pipeline.models.student import load_student
from pipeline.models.two_step import load_two_step

MODEL_KINDS = ("student", "teacher")
TEACHER_SUFFIXES = (".yaml", ".yml")


def load_searcher(source: str | Path, model_kind: str = "student",
                  device: str | torch.device = "cpu") -> Searcher:
    """``model_kind`` "student": ``source`` is a student checkpoint; "teacher": ``source`` is a
    teacher YAML config. In eval mode on ``device``."""
    if model_kind == "student":
        return load_student(source, device)
    if model_kind == "teacher":
        return load_two_step(source, device)
    raise ValueError(f"unknown model kind {model_kind!r}; expected one of {MODEL_KINDS}")


def model_kind(spec: str | Path) -> str:
    """MODEL is a teacher when it is a YAML config, else a student checkpoint."""
    return "teacher" if Path(spec).suffix.lower() in TEACHER_SUFFIXES else "student"


def model_info(spec: str | Path) -> ModelInfo:
    """Kind, name and weights fingerprint of MODEL, without loading it."""
    spec = str(spec)
    kind = model_kind(spec)
    if kind == "student":
        if not Path(spec).is_file():
            raise FileNotFoundError(f"student checkpoint {spec} not found (MODEL is a student "
                                    "checkpoint or a teacher YAML config)")
        return ModelInfo(kind, spec, file_fingerprint(spec))
    cfg = load_config(spec, TeacherConfig)
    parts = [file_fingerprint(cfg.checkpoint(part)) for part in ("detector", "reid")]
    return ModelInfo(kind, spec, hashlib.sha256("\n".join(parts).encode()).hexdigest())


def load_model(spec: str | Path, device: str | torch.device = "cpu") -> tuple[Searcher, ModelInfo]:
    """(searcher in eval mode on ``device``, its ModelInfo)."""
    info = model_info(spec)
    return load_searcher(spec, info.kind, device), info
