"""Paired image + box transforms on a *sample dict*.

A sample is ``{"image": (3, H, W) float tensor, <key ending in "boxes">: (N, 4) float tensor
x1, y1, x2, y2 in pixels of that image, ...}``. Every geometric transform moves EVERY key that
ends in ``"boxes"`` exactly like the image, so cached teacher boxes follow the ground truth.
Other keys pass through untouched. Transforms return a new dict; inputs are not modified.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

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


def resize_scale(height: int, width: int, min_size: int | None, max_size: int | None) -> float:
    """Scale that brings the shorter side to ``min_size`` without the longer side passing
    ``max_size`` (torchvision's GeneralizedRCNNTransform rule). ``None`` leaves that limit off;
    both ``None`` gives 1.0."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width} (H x W)")
    for name, value in (("min_size", min_size), ("max_size", max_size)):
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    scale = 1.0 if min_size is None else min_size / min(height, width)
    if max_size is not None and max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return float(scale)


def resize_sample(sample: dict, min_size: int | None, max_size: int | None) -> dict:
    """Resize the image (bilinear) by :func:`resize_scale` and scale every ``*boxes`` key.

    The new size is ``round(H * scale) x round(W * scale)``; boxes are scaled by the exact
    per-axis ratios new/old so they stay on the resized pixel grid. Records ``"scale"`` (float,
    the nominal scale; multiply original coordinates by it, divide predictions by it)."""
    image = _check_image(sample)
    height, width = image.shape[-2:]
    scale = resize_scale(height, width, min_size, max_size)
    new_h, new_w = max(1, int(round(height * scale))), max(1, int(round(width * scale)))
    out = dict(sample)
    if (new_h, new_w) != (height, width):
        out["image"] = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear",
                                     align_corners=False)[0]
    ratios = torch.tensor([new_w / width, new_h / height] * 2)
    for key in box_keys(sample):
        boxes = _as_boxes(key, sample[key])
        out[key] = boxes * ratios.to(boxes.dtype) if boxes.is_floating_point() else boxes * ratios
    out["scale"] = float(scale) * float(sample.get("scale", 1.0))
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
