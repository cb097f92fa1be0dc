"""The trained teachers on disk: where stage one puts them and how they are loaded back.

A teacher config's ``out_dir`` holds ``detector.pt`` and ``reid.pt``: the weights plus the
``model_args`` that rebuild each network (no optimizer state). Their bytes key the teacher
cache, so they are read as written, never rewritten.
"""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.models.checkpoint import load_checkpoint, read_checkpoint
from pipeline.models.teacher_detector import TeacherDetector
from pipeline.models.teacher_reid import TeacherReid

#: constructor arguments renamed since teacher checkpoints were first written: old -> (new,
#: how an old value becomes a new one)
RENAMED_ARGS = {
    "trainable_layers": ("frozen_stages", lambda trainable: 5 - int(trainable)),
    "embed_dim": ("embedding_dim", int),
}


def upgrade_args(model_args: dict) -> dict:
    """A checkpoint's ``model_args`` with renamed arguments under their current names."""
    out = {}
    for key, value in model_args.items():
        new, convert = RENAMED_ARGS.get(key, (key, lambda v: v))
        out[new] = convert(value)
    return out


def _load(path: str | Path, cls, device) -> torch.nn.Module:
    ckpt = read_checkpoint(path, "cpu")
    model = cls(**upgrade_args(ckpt["model_args"]))
    load_checkpoint(path, model)
    return model.to(device).eval()


def load_detector(path: str | Path, device="cpu") -> TeacherDetector:
    """The trained detector from ``detector.pt``, eval mode."""
    return _load(path, TeacherDetector, device)


def load_reid(path: str | Path, device="cpu") -> TeacherReid:
    """The trained Re-ID teacher from ``reid.pt``, eval mode."""
    return _load(path, TeacherReid, device)
