"""The interface every searchable model offers (the student, the two-step teacher, an exported
ONNX model): gallery detection and query embedding, on images at their original size.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class Searcher(Protocol):
    def detect(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Gallery mode. images: (3, H, W) float in [0, 1]. Per image {"boxes" (N, 4) x1, y1,
        x2, y2 in original pixels, "scores" (N,), "embeddings" (N, D) unit norm}."""
        ...

    def embed_boxes(self, images: list[Tensor], boxes: list[Tensor]) -> list[Tensor]:
        """Query mode: per image, (Ni, D) unit-norm embeddings of the given (Ni, 4) boxes
        (x1, y1, x2, y2, original pixels)."""
        ...
