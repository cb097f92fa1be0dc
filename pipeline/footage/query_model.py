"""Embedding query pictures with the model that made a gallery."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pipeline.footage.store import Gallery, GalleryError, check_same_model
from pipeline.models.precision import autocast
from pipeline.arrays import to_numpy
from pipeline.runtime.loading import load_model, model_info
from pipeline.runtime.settings import apply_settings


class QueryEmbedder:
    """Embeds query pictures with the gallery's model, loaded on first use and run at the
    gallery's settings (input size, proposals, bf16)."""

    def __init__(self, gallery: Gallery, model: str | None = None, device: str = "cpu"):
        self.gallery, self.device = gallery, torch.device(device)
        self.model = model or gallery.model.name
        self._searcher = None

    def check(self) -> None:
        """The model must be there and hold the gallery's weights (ModelMismatchError naming
        both otherwise); nothing is loaded."""
        if not Path(self.model).exists():
            raise GalleryError(f"the gallery's model {self.model} is not found here; pass "
                               f"the same weights with --model")
        check_same_model(self.gallery.directory, self.gallery.model,
                         replace(model_info(self.model), settings=self.gallery.model.settings))

    def searcher(self):
        if self._searcher is None:
            self.check()
            searcher, _ = load_model(self.model, self.device)
            self._searcher = apply_settings(searcher, self.gallery.model.settings)
        return self._searcher

    @torch.no_grad()
    def embed(self, rgb: np.ndarray, box) -> np.ndarray:
        image = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0).to(self.device)
        boxes = torch.tensor([box], dtype=torch.float32, device=self.device)
        searcher = self.searcher()
        with autocast(self.device, cpu=self.gallery.model.settings.bf16):
            emb = searcher.embed_boxes([image], [boxes])[0]
        return to_numpy(emb, searcher.embedding_dim)[0]
