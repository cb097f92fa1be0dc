"""Image files read without torch, one way everywhere: sizes from headers, RGB arrays. Errors
name the file.

Every picture the toolkit reads (dataset and footage frames, query pictures, uploads, result
pictures) goes through :func:`picture_rgb`, so what is indexed, what is queried and what a
page shows agree with what a photo viewer shows:

- the EXIF orientation is applied (a phone photo stored sideways is read upright), and
  :func:`image_size` reports the size after it;
- every PIL mode becomes 8-bit RGB: grey (``1``, ``L``) is expanded; 16-bit grey (``I;16``
  and kin) is scaled by 255/65535; 32-bit ``I`` and float ``F`` are scaled from the range
  their values use (0..1 for ``F``, 0..255, or 0..65535 when larger values occur; clipped);
  CMYK and the other colour spaces are converted; palette and alpha modes (``P``, ``PA``,
  ``LA``, ``RGBA``, ...) are composited on WHITE, what viewers and web pages show behind a
  transparent picture (a person drawn on nothing is then seen against a plain background).

Kept apart from :mod:`pipeline.data.images` (torch tensors) so that reading a dataset's
annotations, as ``evaluate --results`` does, never imports torch.
"""
from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .records import DatasetError

# JPEG start-of-frame markers (baseline, progressive, lossless, ...): they carry the size
SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
APP1, EXIF_HEADER = 0xE1, b"Exif\x00\x00"
ORIENTATION = 0x0112                 # the EXIF tag
TURNED = frozenset({5, 6, 7, 8})     # orientations that swap width and height
BACKGROUND = (255, 255, 255)         # what a transparent picture is composited on
ALPHA_MODES = frozenset({"P", "PA", "LA", "La", "RGBA", "RGBa"})
WIDE_MODES = frozenset({"I", "F"})   # 32-bit integer and float pixels
MAX_8BIT, MAX_16BIT = 255, 65535


def jpeg_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) as shown (EXIF orientation applied) from a JPEG's segment headers
    only; None when the file is not a JPEG this walk understands (the caller then asks PIL)."""
    orientation = 1
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            return None
        while True:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0xFF:
                return None
            marker, length = head[1], struct.unpack(">H", head[2:])[0]
            if marker == APP1:
                orientation = _exif_orientation(f.read(length - 2), orientation)
                continue
            if marker in SOF_MARKERS:
                frame = f.read(5)
                if len(frame) < 5:
                    return None
                height, width = struct.unpack(">HH", frame[1:5])
                if not (width and height):
                    return None
                return (height, width) if orientation in TURNED else (width, height)
            f.seek(length - 2, 1)


def _exif_orientation(segment: bytes, default: int) -> int:
    if not segment.startswith(EXIF_HEADER):
        return default          # an XMP packet, also in APP1
    exif = Image.Exif()
    try:
        exif.load(segment[len(EXIF_HEADER):])
    except (SyntaxError, ValueError, struct.error, OSError):
        return default          # a damaged EXIF block: PIL ignores it when decoding too
    return int(exif.get(ORIENTATION, default) or default)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as shown (EXIF orientation applied) from the file header, without
    decoding the pixels."""
    try:
        size = jpeg_size(path)
        if size is not None:
            return size
        with Image.open(path) as im:
            turned = im.getexif().get(ORIENTATION, 1) in TURNED
            return (im.height, im.width) if turned else im.size
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file is missing") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DatasetError(f"{path}: image does not decode ({e})") from None


def load_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB array of an image file, as shown (see the module docstring)."""
    return read_rgb(path, str(path))


def read_rgb(data: bytes | str | Path, name: str, max_pixels: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a file path or raw bytes, as shown (see the module docstring);
    DatasetError naming ``name`` when missing, not a picture, does not decode, or (with
    ``max_pixels``) is larger than that, checked before the pixels are decoded."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            if max_pixels is not None and im.width * im.height > max_pixels:
                raise DatasetError(f"{name}: {im.width}x{im.height} is too large a picture")
            return picture_rgb(im)
    except UnidentifiedImageError:
        raise DatasetError(f"{name}: image does not decode (not a picture this toolkit can "
                           "read)") from None
    except OSError as e:
        if e.errno is not None:   # the file system's error (missing, a folder, no permission)
            raise DatasetError(f"{name}: image file cannot be read ({e.strerror})") from None
        raise DatasetError(f"{name}: image does not decode ({e})") from None
    except (ValueError, SyntaxError, Image.DecompressionBombError) as e:
        if isinstance(e, DatasetError):
            raise
        raise DatasetError(f"{name}: image does not decode ({e})") from None


def picture_rgb(im: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an opened picture: EXIF orientation applied, its mode mapped to
    8-bit RGB (see the module docstring)."""
    im = ImageOps.exif_transpose(im) or im
    if im.mode in ALPHA_MODES:
        rgba = im.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return np.array(Image.alpha_composite(flat, rgba).convert("RGB"))
    if im.mode.startswith("I;16") or im.mode in WIDE_MODES:
        return np.repeat(_grey_to_8bit(im)[:, :, None], 3, axis=2)
    return np.array(im.convert("RGB"))


def _grey_to_8bit(im: Image.Image) -> np.ndarray:
    """(H, W) uint8 from 16-bit, 32-bit integer or float grey, scaled by the range used."""
    values = np.asarray(im, dtype=np.float64)
    top = float(values.max()) if values.size else 0.0
    if im.mode.startswith("I;16") or top > MAX_8BIT:
        scale = MAX_8BIT / MAX_16BIT
    elif im.mode == "F" and top <= 1.0:
        scale = float(MAX_8BIT)
    else:
        scale = 1.0
    return np.clip(np.rint(values * scale), 0, MAX_8BIT).astype(np.uint8)
