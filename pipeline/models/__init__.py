"""Networks: backbones, heads, OIM, the end-to-end student and the two-step teacher.

``load_searcher`` rebuilds any trained model from its checkpoint alone and returns an object with
the Searcher protocol (``detect`` / ``embed_boxes``, CONTRACTS.md section 3), in eval mode.
"""
from __future__ import annotations

from pathlib import Path

import torch

MODEL_KINDS = ("student", "teacher")


def load_searcher(checkpoint: str | Path, model_kind: str, device: str | torch.device = "cpu"):
    """Dispatch on ``model_kind``; each branch imports its model lazily."""
    if model_kind == "student":
        from pipeline.models.student import load_student
        return load_student(checkpoint, device)
    if model_kind == "teacher":  # checkpoint: the teacher YAML config (out_dir/*.pt)
        from pipeline.models.two_step import load_two_step
        return load_two_step(checkpoint, device)
    raise ValueError(f"unknown model kind {model_kind!r}; expected one of {MODEL_KINDS}")
