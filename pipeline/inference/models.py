"""Which model a MODEL argument names, its fingerprint, and loading it (the one place that
calls :func:`pipeline.models.load_searcher` for footage).

MODEL is a student checkpoint (``checkpoint_last.pt``) or a two-step teacher's YAML config
(its ``out_dir`` holds ``detector.pt`` and ``reid.pt``). The fingerprint hashes the CONTENT
of the weights, so a gallery notices a retrained checkpoint at the same path.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from cache.key import file_fingerprint
from pipeline.config import load_config
from pipeline.config.teacher import TeacherConfig
from pipeline.engine.teacher import detector_path, reid_path
from pipeline.gallery.store import ModelInfo
from pipeline.models import load_searcher

TEACHER_SUFFIXES = (".yaml", ".yml")
PROBE_SIZE = 64                  # pixels of the blank image that reveals the embedding size


def model_kind(spec: str | Path) -> str:
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
    parts = [file_fingerprint(p) for p in (detector_path(cfg), reid_path(cfg))]
    return ModelInfo(kind, spec, hashlib.sha256("\n".join(parts).encode()).hexdigest())


def load_model(spec: str | Path, device: str | torch.device = "cpu"):
    """(searcher in eval mode on ``device``, its ModelInfo)."""
    info = model_info(spec)
    return load_searcher(spec, info.kind, device), info


def autocast(device: torch.device):
    """bf16 autocast on CUDA (as ``evaluate`` runs models), nothing elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def embedding_dim(searcher, device) -> int:
    """The size of the searcher's embeddings, from one box on a blank image."""
    image = torch.zeros(3, PROBE_SIZE, PROBE_SIZE, device=device)
    box = torch.tensor([[8.0, 4.0, 40.0, 60.0]], device=device)
    with autocast(device):
        return int(searcher.embed_boxes([image], [box])[0].shape[1])


def to_numpy(t: torch.Tensor, cols: int | None = None) -> np.ndarray:
    a = t.detach().float().cpu().numpy()
    return a.reshape(-1, cols) if cols else a.ravel()
