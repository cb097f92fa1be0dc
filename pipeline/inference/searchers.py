"""Loading a searcher for use: a student from its checkpoint, or the two-step teacher from its
YAML config (its ``out_dir`` holds both trained parts)."""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.models.searcher import Searcher
from pipeline.models.student import load_student
from pipeline.models.two_step import load_two_step

MODEL_KINDS = ("student", "teacher")


def load_searcher(source: str | Path, model_kind: str = "student",
                  device: str | torch.device = "cpu") -> Searcher:
    """``model_kind`` "student": ``source`` is a student checkpoint; "teacher": ``source`` is a
    teacher YAML config. In eval mode on ``device``."""
    if model_kind == "student":
        return load_student(source, device)
    if model_kind == "teacher":
        return load_two_step(source, device)
    raise ValueError(f"unknown model kind {model_kind!r}; expected one of {MODEL_KINDS}")
