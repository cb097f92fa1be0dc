"""The one record type every reader hands on, whatever the dataset.

Boxes are always float32 ``(x1, y1, x2, y2)`` in pixels of the original image.
Identities are the dataset's own numbers; a person without identity carries
:data:`UNLABELED`. Training code that needs contiguous class indices maps them
with :func:`contiguous_labels`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Identity of a person box that has no identity (PRW writes -2 on disk).
UNLABELED = -1

DATASETS = ("prw", "cuhk-sysu")

#: gallery size meaning "the whole test set" (PRW's only gallery; CUHK-SYSU's whole pool)
FULL_GALLERY = -1


class DatasetError(ValueError):
    """Input data is malformed. The message names the file and what is wrong."""


@dataclass(frozen=True, eq=False)
class ImageRecord:
    """One scene image and every person box in it."""

    name: str                 # file name as in the dataset: "c1s1_000151.jpg", "s1.jpg"
    path: Path                # where the image lies
    width: int
    height: int
    boxes: np.ndarray         # (N, 4) float32 x1, y1, x2, y2
    pids: np.ndarray          # (N,) int64; UNLABELED for no identity
    camera: int | None = None  # PRW camera number; None for CUHK-SYSU

    @property
    def labeled(self) -> np.ndarray:
        return self.pids != UNLABELED


@dataclass(frozen=True, eq=False)
class QueryRecord:
    """One query: a given box in one image."""

    image: str                # image name, as ImageRecord.name
    box: np.ndarray           # (4,) float32 x1, y1, x2, y2
    pid: int                  # PRW: the identity; CUHK-SYSU: q + 1 for protocol query q
    camera: int | None = None


@dataclass(frozen=True, eq=False)
class QueryGallery:
    """A CUHK-SYSU protocol gallery of one query, in protocol-file order."""

    images: tuple[str, ...]   # gallery image names (never the query image)
    boxes: np.ndarray         # (G, 4) float32 box of the query person per image; NaN rows where absent


@dataclass(eq=False)
class PersonSearchData:
    """A whole dataset as read from disk."""

    dataset: str                          # "prw" or "cuhk-sysu"
    root: Path
    train: list[ImageRecord]
    gallery: list[ImageRecord]            # every test image (PRW test frames, CUHK-SYSU pool)
    queries: list[QueryRecord]            # in the dataset's query order
    # CUHK-SYSU only: gallery size (50, 100, ...) -> one QueryGallery per query, for each
    # TestG{N}.mat present. PRW has no protocol galleries: {}.
    query_galleries: dict[int, list[QueryGallery]] = field(default_factory=dict)

    def split(self, name: str) -> list[ImageRecord]:
        if name == "train":
            return self.train
        if name in ("gallery", "test"):
            return self.gallery
        raise ValueError(f"unknown split {name!r}; expected 'train' or 'gallery'")

    def train_identities(self) -> np.ndarray:
        """Sorted unique labeled identities of the training split."""
        pids = [r.pids[r.pids != UNLABELED] for r in self.train]
        return np.unique(np.concatenate(pids)) if pids else np.zeros(0, np.int64)


def contiguous_labels(identities: np.ndarray) -> dict[int, int]:
    """Map raw identities (PRW's are not contiguous) to 0..K-1 in sorted order."""
    return {int(pid): i for i, pid in enumerate(np.unique(identities))}
