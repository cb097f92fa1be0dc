"""The interface every searchable model offers (the student, the two-step teacher, an exported
ONNX model): gallery detection and query embedding on images at their original size, and the
run settings a deployment changes (input size, proposals).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class Searcher(Protocol):
    embedding_dim: int                  # D of every embedding it gives
    input_size: tuple[float, float]     # (shorter side, cap on the longer) frames are resized to
    proposals: int | None               # RPN proposals scored per image (None: not adjustable)

    def detect(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Gallery mode. images: (3, H, W) float in [0, 1]. Per image {"boxes" (N, 4) x1, y1,
        x2, y2 in original pixels, "scores" (N,), "embeddings" (N, D) unit norm}."""
        ...

    def embed_boxes(self, images: list[Tensor], boxes: list[Tensor]) -> list[Tensor]:
        """Query mode: per image, (Ni, D) unit-norm embeddings of the given (Ni, 4) boxes
        (x1, y1, x2, y2, original pixels)."""
        ...

    def set_input_size(self, min_size: float, max_size: float | None = None) -> None:
        """Resize frames to a shorter side of ``min_size`` (the longer at most ``max_size``,
        by default in the current proportion)."""
        ...

    def set_proposals(self, count: int) -> None:
        """Score ``count`` proposals per image; SettingError where the model fixes them."""
        ...
