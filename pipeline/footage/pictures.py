"""Pictures cut from a gallery's stored previews: person crops and frames with a box drawn.

Boxes are x1, y1, x2, y2 in the ORIGINAL frame's pixels; previews may be smaller
(:data:`pipeline.data.footage.PREVIEW_MAX_SIDE`), so boxes are scaled by preview/original.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from pipeline.footage.store import Gallery, GalleryError

CROP_HEIGHT = 160             # crops are scaled to this height for pages
JPEG_QUALITY = 85
BOX_COLOUR = (255, 210, 0)
NO_PICTURE = (128, 128, 128)  # stands in for a frame stored without its preview ...
BLANK_MAX_SIDE = 320          # ... at most this large


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
    left = int(np.clip(np.floor(x1 * sx), 0, image.width - 1))
    top = int(np.clip(np.floor(y1 * sy), 0, image.height - 1))
    right = int(np.clip(np.ceil(x2 * sx), left + 1, image.width))
    bottom = int(np.clip(np.ceil(y2 * sy), top + 1, image.height))
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


def _frame_or_blank(gallery: Gallery, frame: int) -> tuple[Image.Image, float, float]:
    """The stored preview, or a grey frame of the original size when none was stored."""
    if gallery.preview(frame):
        return preview_image(gallery, frame)
    w, h = int(gallery.frame_width[frame]), int(gallery.frame_height[frame])
    scale = min(1.0, BLANK_MAX_SIDE / max(w, h, 1))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return Image.new("RGB", size, NO_PICTURE), size[0] / w, size[1] / h


def detection_crop(gallery: Gallery, det: int) -> bytes:
    """JPEG crop of one stored detection."""
    image, sx, sy = _frame_or_blank(gallery, int(gallery.detection_frame[det]))
    return jpeg_bytes(crop(image, gallery.boxes[det], sx, sy))


def detection_in_frame(gallery: Gallery, det: int) -> bytes:
    """JPEG of the detection's whole frame with its box drawn."""
    image, sx, sy = _frame_or_blank(gallery, int(gallery.detection_frame[det]))
    return jpeg_bytes(with_box(image, gallery.boxes[det], sx, sy))


def side_by_side(jpegs: list[bytes]) -> bytes:
    """Several crops (JPEG bytes) in one row at :data:`CROP_HEIGHT`: a multi-crop query's
    picture."""
    images = [Image.open(io.BytesIO(j)).convert("RGB") for j in jpegs]
    images = [im.resize((max(1, round(im.width * CROP_HEIGHT / im.height)), CROP_HEIGHT))
              for im in images]
    row = Image.new("RGB", (sum(im.width for im in images) + 4 * (len(images) - 1), CROP_HEIGHT),
                    (255, 255, 255))
    x = 0
    for im in images:
        row.paste(im, (x, 0))
        x += im.width + 4
    return jpeg_bytes(row)
