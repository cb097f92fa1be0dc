"""Person crops for the Re-ID teacher: a crop dataset over GT boxes, a PK batch sampler and the
batched ``crop_and_resize`` used at inference (cache build and two-step searcher), so training
and inference cut boxes the same way (bilinear RoIAlign). Boxes are x1, y1, x2, y2 pixels.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler
from torchvision.ops import roi_align

from .images import load_image
from .records import DatasetError, ImageRecord, contiguous_labels

SAMPLING_RATIO = 2


def crop_and_resize(image: Tensor, boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """image (3, H, W), boxes (N, 4) in that image's pixels -> crops (N, 3, h, w), bilinear."""
    if len(boxes) == 0:
        return image.new_zeros((0, image.shape[0], *size))
    rois = boxes.to(image.dtype).reshape(-1, 4)
    return roi_align(image[None], [rois], output_size=tuple(size), spatial_scale=1.0,
                     sampling_ratio=SAMPLING_RATIO, aligned=True)


def crop_many(images: Sequence[Tensor], boxes: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
    """:func:`crop_and_resize` over images of any sizes, rows in image order."""
    crops = [crop_and_resize(im, b, size) for im, b in zip(images, boxes)]
    if not crops:
        return torch.zeros((0, 3, *size))
    return torch.cat(crops)


def jitter_box(box: np.ndarray, rng: np.random.Generator, fraction: float) -> np.ndarray:
    """Shift each side by up to ``fraction`` of the box width/height (uniform)."""
    w, h = box[2] - box[0], box[3] - box[1]
    delta = rng.uniform(-fraction, fraction, 4) * np.array([w, h, w, h])
    out = box + delta
    if out[2] - out[0] < 1 or out[3] - out[1] < 1:
        return box
    return out


class CropDataset(Dataset):
    """One item per labeled GT box: (crop (3, h, w) in [0, 1], contiguous label).

    Random horizontal flip and box jitter are deterministic per (seed, epoch, index).
    Decoded scene images are kept (uint8) for up to ``cached_images`` images per process."""

    def __init__(self, records: Sequence[ImageRecord], crop_size: tuple[int, int], *,
                 jitter: float = 0.05, flip: bool = True, seed: int = 0,
                 cached_images: int = 512):
        self.records = list(records)
        items = [(i, j) for i, r in enumerate(self.records) for j in np.flatnonzero(r.labeled)]
        if not items:
            raise DatasetError("no labeled person boxes in the training split to train the "
                               "Re-ID teacher on")
        self.items = items
        pids = np.array([self.records[i].pids[j] for i, j in items], np.int64)
        self.label_of = contiguous_labels(pids)
        self.labels = np.array([self.label_of[int(p)] for p in pids], np.int64)
        self.num_classes = len(self.label_of)
        self.crop_size = tuple(crop_size)
        self.jitter, self.flip, self.seed = float(jitter), bool(flip), int(seed)
        self.cached_images = int(cached_images)
        self.epoch = 0
        self._images: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _image(self, i: int) -> Tensor:
        if i in self._images:
            return self._images[i].float().div_(255.0)
        image = load_image(self.records[i].path)
        if len(self._images) < self.cached_images:
            self._images[i] = (image * 255.0).round().to(torch.uint8)
        return image

    def __getitem__(self, index: int):
        i, j = self.items[index]
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        box = jitter_box(np.asarray(self.records[i].boxes[j], np.float64), rng, self.jitter)
        crop = crop_and_resize(self._image(i), torch.from_numpy(box).float()[None],
                               self.crop_size)[0]
        if self.flip and rng.random() < 0.5:
            crop = crop.flip(-1)
        return crop, int(self.labels[index])


class PKSampler(Sampler[list[int]]):
    """Batches of P identities x K crops (with replacement when an identity has fewer than K),
    deterministic per (seed, epoch). Each epoch visits every identity once (the last
    incomplete group of identities is dropped)."""

    def __init__(self, labels: Sequence[int], p: int, k: int, *, seed: int = 0):
        labels = np.asarray(labels)
        self.by_label = {int(l): np.flatnonzero(labels == l) for l in np.unique(labels)}
        if p < 2 or k < 2:
            raise ValueError(f"PK sampling needs P >= 2 and K >= 2, got P={p}, K={k}")
        if len(self.by_label) < p:
            raise ValueError(f"P={p} identities per batch but only {len(self.by_label)} exist")
        self.p, self.k, self.seed, self.epoch = int(p), int(k), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.by_label) // self.p

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        ids = rng.permutation(sorted(self.by_label))
        for b in range(len(self)):
            batch = []
            for pid in ids[b * self.p:(b + 1) * self.p]:
                pool = self.by_label[int(pid)]
                batch += rng.choice(pool, self.k, replace=len(pool) < self.k).tolist()
            yield batch
