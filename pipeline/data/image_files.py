"""Image files read without torch: sizes from headers, RGB arrays. Errors name the file.

Kept apart from :mod:`pipeline.data.images` (torch tensors) so that reading a dataset's
annotations, as ``evaluate --results`` does, never imports torch.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .records import DatasetError


# JPEG start-of-frame markers (baseline, progressive, lossless, ...): they carry the size
SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame segment, walking the segment headers only;
    None when the file is not a JPEG this walk understands (the caller then asks PIL)."""
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            return None
        while True:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0xFF:
                return None
            marker, length = head[1], struct.unpack(">H", head[2:])[0]
            if marker in SOF_MARKERS:
                frame = f.read(5)
                if len(frame) < 5:
                    return None
                height, width = struct.unpack(">HH", frame[1:5])
                return (width, height) if width and height else None
            f.seek(length - 2, 1)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        size = jpeg_size(path)
        if size is not None:
            return size
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
