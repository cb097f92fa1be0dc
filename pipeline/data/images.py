"""Image decoding into the tensors torchvision detection models take."""
from __future__ import annotations

from pathlib import Path

import torch

from .image_files import load_rgb


def load_image(path: str | Path) -> torch.Tensor:
    """(3, H, W) float32 tensor in [0, 1], the layout torchvision detection models take."""
    array = load_rgb(path)
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)
