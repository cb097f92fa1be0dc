"""Image decoding with errors that name the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .records import DatasetError


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file is missing") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DatasetError(f"{path}: image does not decode ({e})") from None


def load_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB array."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file is missing") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DatasetError(f"{path}: image does not decode ({e})") from None


def load_image(path: str | Path) -> torch.Tensor:
    """(3, H, W) float32 tensor in [0, 1], the layout torchvision detection models take."""
    array = load_rgb(path)
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)
