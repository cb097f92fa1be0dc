"""The two-step teacher as a :class:`~pipeline.runtime.searcher.Searcher`: detector boxes, then
Re-ID embeddings of crops cut by ``crop_and_resize`` exactly as in the cache build.

Boxes in and out are x1, y1, x2, y2 in original image pixels; embeddings L2-normalised.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from pipeline.config import load_config
from pipeline.config.teacher import TeacherConfig
from pipeline.data.crops import crop_many
from pipeline.errors import SettingError
from pipeline.models.teachers import load_detector, load_reid
from pipeline.models.transform import input_size, set_input_size



class TwoStepSearcher:
    """``detector``: a torchvision Faster R-CNN (eval); ``reid``: a TeacherReid (eval)."""

    def __init__(self, detector, reid, crop_size: tuple[int, int], device="cpu"):
        self.device = torch.device(device)
        self.detector = detector.to(self.device).eval()
        self.reid = reid.to(self.device).eval()
        self.crop_size = tuple(crop_size)

    # the run settings of a Searcher (pipeline/runtime/searcher.py)
    @property
    def embedding_dim(self) -> int:
        return int(self.reid.embedding_dim)

    @property
    def input_size(self) -> tuple[float, float]:
        """The detector's input size (Re-ID crops come from the original frame)."""
        return input_size(self.detector.transform)

    def set_input_size(self, min_size: float, max_size: float | None = None) -> None:
        set_input_size(self.detector.transform, min_size, max_size)

    @property
    def proposals(self) -> int | None:
        return None

    def set_proposals(self, count: int) -> None:
        raise SettingError("the two-step teacher's proposal count is not adjustable (its "
                           "detector keeps its trained settings); index without --proposals")

    @torch.no_grad()
    def embed_boxes(self, images: list[Tensor], boxes: list[Tensor]) -> list[Tensor]:
        """Per image (Ni, 4) boxes -> (Ni, D) L2-normalised embeddings."""
        counts = [len(b) for b in boxes]
        crops = crop_many(images, [b.to(images[0].device).float() for b in boxes],
                          self.crop_size)
        if len(crops) == 0:
            return [torch.zeros((0, self.reid.embedding_dim), device=self.device) for _ in boxes]
        return list(self.reid.embed(crops).float().split(counts))

    @torch.no_grad()
    def detect(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Per image {"boxes" (N,4), "scores" (N,), "embeddings" (N,D)}."""
        dets = self.detector(images)
        embs = self.embed_boxes(images, [d["boxes"] for d in dets])
        return [{"boxes": d["boxes"].float(), "scores": d["scores"].float(), "embeddings": e}
                for d, e in zip(dets, embs)]


def load_two_step(teacher_config: str | Path, device="cpu") -> TwoStepSearcher:
    """From a teacher YAML config: its ``out_dir/detector.pt`` and ``out_dir/reid.pt``."""
    cfg = load_config(teacher_config, TeacherConfig)
    detector = load_detector(cfg.checkpoint("detector"), device)
    reid = load_reid(cfg.checkpoint("reid"), device)
    return TwoStepSearcher(detector, reid, reid.crop_size, device)
