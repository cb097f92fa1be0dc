"""Paired image + box transforms on a *sample dict*.

A sample is ``{"image": (3, H, W) float tensor, <key ending in "boxes">: (N, 4) float tensor
x1, y1, x2, y2 in pixels of that image, ...}``. Every geometric transform moves EVERY key that
ends in ``"boxes"`` exactly like the image, so cached teacher boxes follow the ground truth.
(Resizing is the model's transform, :mod:`pipeline.models.transform`.)
Other keys pass through untouched. Transforms return a new dict; inputs are not modified.
"""
from __future__ import annotations

import torch

#: ImageNet channel statistics (RGB, images in [0, 1]) used by torchvision's pretrained backbones.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

BOX_SUFFIX = "boxes"


def box_keys(sample: dict) -> list[str]:
    """Keys of ``sample`` that hold boxes (names ending in "boxes")."""
    return [k for k in sample if k.endswith(BOX_SUFFIX)]


def _check_image(sample: dict) -> torch.Tensor:
    image = sample.get("image")
    if not torch.is_tensor(image) or image.dim() != 3:
        raise ValueError("sample['image'] must be a (3, H, W) tensor, got "
                         f"{type(image).__name__} {getattr(image, 'shape', '')}")
    return image


def _as_boxes(key: str, boxes) -> torch.Tensor:
    boxes = torch.as_tensor(boxes)
    if boxes.numel() == 0:
        return boxes.reshape(0, 4).to(boxes.dtype if boxes.is_floating_point() else torch.float32)
    if boxes.shape[-1] != 4:
        raise ValueError(f"sample[{key!r}] must be (N, 4) x1, y1, x2, y2, got {tuple(boxes.shape)}")
    return boxes


def flip_boxes(boxes: torch.Tensor, width: float) -> torch.Tensor:
    """Mirror (N, 4) x1, y1, x2, y2 boxes in an image of ``width``: x -> width - x, x1/x2 swap."""
    out = boxes.clone()
    out[..., 0] = width - boxes[..., 2]
    out[..., 2] = width - boxes[..., 0]
    return out


def hflip_sample(sample: dict) -> dict:
    """Horizontally flip the image and every ``*boxes`` key. Applying it twice is the identity."""
    image = _check_image(sample)
    width = image.shape[-1]
    out = dict(sample)
    out["image"] = image.flip(-1)
    for key in box_keys(sample):
        out[key] = flip_boxes(_as_boxes(key, sample[key]), width)
    return out


def normalize_image(image: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """(3, H, W) or (B, 3, H, W) image in [0, 1] -> (image - mean) / std per channel."""
    if image.dim() not in (3, 4) or image.shape[-3] != len(mean):
        raise ValueError(f"image must be (3, H, W) or (B, 3, H, W), got {tuple(image.shape)}")
    mean_t = torch.as_tensor(mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    if (std_t == 0).any():
        raise ValueError(f"std must be non-zero, got {std}")
    return (image - mean_t) / std_t
