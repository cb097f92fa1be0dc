"""The torch detection dataset over :class:`ImageRecord` lists, and its collate function.

An item is ``(image, target)``: image (3, H, W) float32 in [0, 1] at the file's size, after
the optional flip; target a dict with
    "boxes" (N, 4) float32 x1, y1, x2, y2 in the image's pixels,
    "pids" (N,) int64 raw dataset identities (UNLABELED = -1), "labels" (N,) int64 ones,
    "image_index" int, "name" str, "flipped" bool, "orig_size" (H, W) of the file,
    plus any extra keys of the hook.
Extension hook: a subclass overrides :meth:`DetectionDataset.extra_targets` to add sample keys
for (index, flipped) in image coordinates; every key ending in "boxes" is then flipped exactly
like the image. Resizing is the model's (its transform moves every "*boxes" key with the
image, by the one rule torchvision's detection transform uses and the ONNX graph repeats), so
an image is resized once.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .images import load_image
from .records import ImageRecord
from .transforms import hflip_sample

RESERVED_KEYS = ("image", "boxes", "pids", "labels", "image_index", "name", "flipped",
                 "orig_size")


class DetectionDataset(Dataset):
    """Person-detection dataset with deterministic flips (per seed, epoch and index)."""

    def __init__(self, records: Sequence[ImageRecord], *, flip_prob: float = 0.0, seed: int = 0):
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must lie in [0, 1], got {flip_prob}")
        self.records = list(records)
        self.flip_prob = float(flip_prob)
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Choose the flip decisions of this epoch (call it before each epoch)."""
        self.epoch = int(epoch)

    def is_flipped(self, index: int) -> bool:
        """The flip decision of item ``index`` in the current epoch (deterministic)."""
        if self.flip_prob <= 0.0:
            return False
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        return bool(rng.random() < self.flip_prob)

    # extension hook --------------------------------------------------------------
    def extra_targets(self, index: int, flipped: bool) -> dict[str, torch.Tensor]:
        """Extra sample keys for item ``index`` seen ``flipped``, in original coordinates."""
        return {}

    # ------------------------------------------------------------------------------
    def __getitem__(self, index: int):
        record = self.records[index]
        image = load_image(record.path)
        orig_size = (int(image.shape[-2]), int(image.shape[-1]))
        flipped = self.is_flipped(index)
        sample = {"image": image,
                  "boxes": torch.from_numpy(np.asarray(record.boxes, np.float32).reshape(-1, 4)
                                            .copy())}
        extra = self.extra_targets(index, flipped)
        clash = [k for k in extra if k in RESERVED_KEYS]
        if clash:
            raise KeyError(f"extra sample keys {clash} clash with the dataset's own keys")
        sample.update(extra)
        if flipped:
            sample = hflip_sample(sample)
        image = sample.pop("image")
        pids = torch.from_numpy(np.asarray(record.pids, np.int64).reshape(-1).copy())
        target = {"boxes": sample.pop("boxes"), "pids": pids,
                  "labels": torch.ones(len(pids), dtype=torch.int64),
                  "image_index": int(index), "name": record.name, "flipped": flipped,
                  "orig_size": orig_size}
        target.update(sample)
        return image, target


def collate_detection(batch):
    """[(image, target), ...] -> (list of images, list of targets); sizes may differ."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)
