"""Normalise, resize and batch images; every target key ending in "boxes" follows the image."""
from __future__ import annotations

from typing import Optional

from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from pipeline.config.model import check_input_size, proportional_max_size


class PersonSearchTransform(GeneralizedRCNNTransform):
    """torchvision's transform, but resizing ALL ``*boxes`` keys of a target, not only "boxes".

    Cached teacher boxes ("proposal_boxes", "proposal_refined_boxes", "jitter_boxes",
    "gt_boxes", ...) are (N,4) x1,y1,x2,y2 in the same pixel frame as the image handed in; they
    come out in the frame of the resized image exactly like "boxes". Flipping is the dataset's job.
    """

    def resize(self, image: Tensor,
               target: Optional[dict[str, Tensor]] = None) -> tuple[Tensor, Optional[dict]]:
        h, w = image.shape[-2:]
        image, _ = super().resize(image, None)
        if target is None:
            return image, target
        new_size = list(image.shape[-2:])
        for key, value in list(target.items()):
            if key.endswith("boxes") and isinstance(value, Tensor):
                target[key] = resize_boxes(value.float().reshape(-1, 4), [h, w], new_size)
        return image, target


def input_size(transform: GeneralizedRCNNTransform) -> tuple[float, float]:
    """(shorter side, cap on the longer side) a torchvision-style transform resizes to."""
    return float(transform.min_size[-1]), float(transform.max_size)


def set_input_size(transform: GeneralizedRCNNTransform, min_size: float,
                   max_size: float | None = None) -> None:
    """Resize to a shorter side of ``min_size`` (the longer at most ``max_size``, by default in
    the current max/min proportion)."""
    check_input_size(min_size, max_size)
    if max_size is None:
        max_size = proportional_max_size(min_size, *input_size(transform))
    transform.min_size, transform.max_size = (int(round(min_size)),), int(round(max_size))


def boxes_to_original(boxes: Tensor, resized_size, original_size) -> Tensor:
    """Boxes in the resized frame -> the original image frame."""
    return resize_boxes(boxes, list(resized_size), list(original_size))


def image_sizes(images: list[Tensor]) -> list[tuple[int, int]]:
    return [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
