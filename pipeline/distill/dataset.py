"""The student's training dataset: the detection dataset plus the cached teacher targets.

For each image the teacher cache view that matches the flip decision is read (the "flip" view
for a flipped image, :mod:`cache.schema`) in ORIGINAL image coordinates; the dataset's geometric
transforms then move every ``*boxes`` key exactly like the image. The cache is opened lazily,
in each DataLoader worker (``TeacherCache`` re-opens after a fork).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cache import INTEGER_KEYS, TeacherCache
from pipeline.data.torch_dataset import DetectionDataset


class CacheAlignmentError(RuntimeError):
    """The cached per-image targets do not line up with the dataset's boxes."""


class StudentDataset(DetectionDataset):
    """``DetectionDataset`` whose targets also carry ``cache_keys`` from the teacher cache."""

    def __init__(self, records, *, cache_path: str | Path | None = None,
                 cache_keys: Sequence[str] = (), **kwargs):
        super().__init__(records, **kwargs)
        if cache_keys and cache_path is None:
            raise ValueError(f"cache keys {list(cache_keys)} requested without a cache file")
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.cache_keys = tuple(cache_keys)
        self._cache = None

    @property
    def cache(self):
        if self._cache is None and self.cache_path is not None:
            self._cache = TeacherCache(self.cache_path)
        return self._cache

    def __getstate__(self):  # never pickle an open HDF5 handle into a worker
        state = self.__dict__.copy()
        state["_cache"] = None
        return state

    def cached_targets(self, index: int, flipped: bool) -> dict[str, torch.Tensor]:
        """Teacher targets of image ``index`` for the view ``flipped``, original coordinates."""
        if not self.cache_keys:
            return {}
        record = self.records[index]
        found = self.cache.image_targets(record.name, flipped=flipped)
        if "gt_features" in self.cache_keys:
            self._check_gt_alignment(record, found)
        out = {}
        for key in self.cache_keys:
            if key not in found:
                raise KeyError(f"teacher cache {self.cache_path} has no {key!r} for {record.name}")
            value = np.asarray(found[key])
            out[key] = torch.from_numpy(value.astype(np.int64 if key in INTEGER_KEYS
                                                     else np.float32, copy=True))
        return out

    def _check_gt_alignment(self, record, found) -> None:
        gt = np.asarray(found.get("gt_boxes", np.zeros((0, 4))), np.float32).reshape(-1, 4)
        boxes = np.asarray(record.boxes, np.float32).reshape(-1, 4)
        if gt.shape != boxes.shape or not np.allclose(gt, boxes, atol=1e-3):
            raise CacheAlignmentError(
                f"{record.name}: the cached gt_boxes ({gt.shape[0]}) are not the dataset's boxes "
                f"({boxes.shape[0]}) in the same order; rebuild the teacher cache")

    # the DetectionDataset extension hook: extra sample keys before the geometric transforms
    def extra_targets(self, index: int, flipped: bool) -> dict[str, torch.Tensor]:
        return self.cached_targets(index, flipped)
