"""Pictures cut from a gallery's stored previews: person crops and frames with a box drawn.

Boxes are x1, y1, x2, y2 in the ORIGINAL frame's pixels; previews may be smaller
(:data:`pipeline.data.footage.PREVIEW_MAX_SIDE`), so boxes are scaled by preview/original.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from .store import Gallery, GalleryError

CROP_HEIGHT = 160             # crops are scaled to this height for pages
JPEG_QUALITY = 85
BOX_COLOUR = (255, 210, 0)


def jpeg_bytes(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()


def preview_image(gallery: Gallery, frame_id: int) -> tuple[Image.Image, float, float]:
    """(preview, x scale, y scale) of a frame: preview pixels per original pixel."""
    data = gallery.preview(frame_id)
    if not data:
        raise GalleryError(f"gallery {gallery.directory} stores no picture of frame {frame_id}")
    try:
        image = Image.open(io.BytesIO(data)).convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise GalleryError(f"the stored picture of frame {frame_id} does not decode ({e})") \
            from None
    return (image, image.width / float(gallery.frame_width[frame_id]),
            image.height / float(gallery.frame_height[frame_id]))


def crop(image: Image.Image, box, sx: float = 1.0, sy: float = 1.0,
         height: int = CROP_HEIGHT) -> Image.Image:
    """The box (original pixels, scaled by sx, sy into ``image``) cut out, ``height`` tall."""
    x1, y1, x2, y2 = (float(v) for v in box)
    left, top = max(0, int(np.floor(x1 * sx))), max(0, int(np.floor(y1 * sy)))
    right = min(image.width, max(left + 1, int(np.ceil(x2 * sx))))
    bottom = min(image.height, max(top + 1, int(np.ceil(y2 * sy))))
    piece = image.crop((left, top, right, bottom))
    width = max(1, round(piece.width * height / max(piece.height, 1)))
    return piece.resize((width, height), Image.BILINEAR)


def with_box(image: Image.Image, box, sx: float = 1.0, sy: float = 1.0) -> Image.Image:
    """A copy of ``image`` with the box drawn."""
    out = image.copy()
    x1, y1, x2, y2 = (float(v) for v in box)
    line = max(2, round(min(out.size) / 120))
    ImageDraw.Draw(out).rectangle((x1 * sx, y1 * sy, x2 * sx, y2 * sy), outline=BOX_COLOUR,
                                  width=line)
    return out


def detection_crop(gallery: Gallery, det: int) -> bytes:
    """JPEG crop of one stored detection."""
    frame = int(gallery.detection_frame[det])
    image, sx, sy = preview_image(gallery, frame)
    return jpeg_bytes(crop(image, gallery.boxes[det], sx, sy))


def detection_in_frame(gallery: Gallery, det: int) -> bytes:
    """JPEG of the detection's whole frame with its box drawn."""
    frame = int(gallery.detection_frame[det])
    image, sx, sy = preview_image(gallery, frame)
    return jpeg_bytes(with_box(image, gallery.boxes[det], sx, sy))
