"""Drawing people and scenes with PIL and numpy.

Boxes are float ``(x1, y1, x2, y2)`` pixels. A person fills its box: head, hair or hat, shirt
with its pattern, arms, trousers, shoes and an accessory; the pose (leg spread, facing side,
arm swing) changes from image to image, the identity cues do not. How much each of those
varies, and how the cameras see the result, is the world's :class:`~.styles.WorldStyle`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .appearance import Appearance
from .styles import Colour, WorldStyle

SHOE_COLOUR = (35, 30, 30)
MID_GREY = 128.0              # contrast stretches about this value


@dataclass(frozen=True)
class CameraStyle:
    """Fixed per camera: background, clutter and colour response, and the world's optics."""

    background: np.ndarray    # (H, W, 3) float32 0..255, with the static clutter drawn in
    gain: np.ndarray          # (3,) per-channel multiplier (lighting, tint and colour cast)
    offset: float             # brightness offset added after the gain
    world: WorldStyle         # contrast, saturation, blur and noise of every camera


def _jitter(rng, colour: Colour, amount: int) -> Colour:
    c = np.asarray(colour) + rng.integers(-amount, amount + 1, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


def random_shape(draw: ImageDraw.ImageDraw, rng, width: int, height: int, colour) -> None:
    x, y = rng.uniform(0, width), rng.uniform(0, height)
    w, h = rng.uniform(0.03, 0.25) * width, rng.uniform(0.03, 0.35) * height
    kind = int(rng.integers(3))
    xy = (x - w / 2, y - h / 2, x + w / 2, y + h / 2)
    if kind == 0:
        draw.rectangle(xy, fill=colour)
    elif kind == 1:
        draw.ellipse(xy, fill=colour)
    else:
        draw.polygon([(x, y - h / 2), (x - w / 2, y + h / 2), (x + w / 2, y + h / 2)], fill=colour)


def make_camera_style(rng: np.random.Generator, size: tuple[int, int],
                      style: WorldStyle) -> CameraStyle:
    """A camera's textured background (wall / floor, static clutter) and colour response."""
    width, height = size
    paint = style.palette[int(rng.integers(len(style.palette)))]
    wall = np.asarray(_jitter(rng, paint, style.colour_jitter)) * 0.5 + 60
    floor = rng.uniform(60, 160, 3)
    horizon = int(height * rng.uniform(0.35, 0.6))
    image = Image.new("RGB", size, tuple(int(v) for v in wall))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, horizon, width, height), fill=tuple(int(v) for v in floor))
    for _ in range(int(rng.integers(*style.background_clutter))):  # windows, signs, plants
        colour = tuple(int(v) for v in rng.integers(20, 235, 3))
        random_shape(draw, rng, width, horizon + 10, colour)
    array = np.asarray(image, np.float32)
    yy = np.linspace(0.85, 1.1, height, dtype=np.float32)[:, None, None]
    texture = rng.normal(0, style.texture, (height // 4 + 1, width // 4 + 1, 1))
    texture = texture.astype(np.float32)
    texture = np.kron(texture, np.ones((4, 4, 1), np.float32))[:height, :width]
    background = np.clip(array * yy + texture, 0, 255)
    gain = rng.uniform(*style.gain_range, 3) * np.asarray(style.colour_cast) * style.exposure
    return CameraStyle(background=background, gain=gain.astype(np.float32),
                       offset=float(rng.uniform(*style.offset_range)), world=style)


def draw_person(draw: ImageDraw.ImageDraw, box, look: Appearance, rng: np.random.Generator,
                style: WorldStyle) -> None:
    """Draw one person filling ``box`` (x1, y1, x2, y2) with identity ``look`` and a random pose
    (stance and arm swing as wide as ``style`` lets them be)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    cx = (x1 + x2) / 2
    facing = 1 if rng.random() < 0.5 else -1
    shirt, trousers, skin, accessory = (_jitter(rng, c, style.colour_jitter) for c in (
        look.shirt, look.trousers, look.skin, look.accessory_colour))
    # backpack behind the torso
    if look.accessory == "backpack":
        draw.rectangle((cx - facing * 0.45 * w - 0.15 * w, y1 + 0.17 * h,
                        cx - facing * 0.45 * w + 0.15 * w, y1 + 0.45 * h), fill=accessory)
    # legs with a random stance
    spread = rng.uniform(*style.leg_spread) * w
    leg_top, leg_bottom = y1 + 0.5 * h, y2 - 0.045 * h
    for side in (-1, 1):
        lx = cx + side * (0.13 * w + spread)
        draw.rectangle((lx - 0.14 * w, leg_top, lx + 0.14 * w, leg_bottom), fill=trousers)
        draw.rectangle((lx - 0.15 * w + facing * 0.03 * w, leg_bottom, lx + 0.15 * w
                        + facing * 0.03 * w, y2), fill=SHOE_COLOUR)
    draw.rectangle((cx - 0.3 * w, leg_top, cx + 0.3 * w, leg_top + 0.08 * h), fill=trousers)
    # arms, swinging
    for side in (-1, 1):
        ax, swing = cx + side * 0.4 * w, rng.uniform(-style.arm_swing, style.arm_swing) * w
        draw.rectangle((ax - 0.1 * w, y1 + 0.17 * h, ax + 0.1 * w + swing, y1 + 0.47 * h),
                       fill=shirt)
        draw.ellipse((ax - 0.08 * w + swing, y1 + 0.45 * h, ax + 0.08 * w + swing, y1 + 0.52 * h),
                     fill=skin)
    # torso and its pattern
    top, bottom = y1 + 0.16 * h, y1 + 0.52 * h
    draw.rectangle((cx - 0.3 * w, top, cx + 0.3 * w, bottom), fill=shirt)
    _draw_pattern(draw, look, (cx - 0.3 * w, top, cx + 0.3 * w, bottom),
                  _jitter(rng, look.pattern_colour, style.colour_jitter))
    # head, hair or hat
    head = (cx - 0.19 * w, y1 + 0.02 * h, cx + 0.19 * w, y1 + 0.16 * h)
    draw.ellipse(head, fill=skin)
    if look.accessory == "hat":
        draw.rectangle((cx - 0.26 * w, y1 + 0.045 * h, cx + 0.26 * w, y1 + 0.065 * h),
                       fill=accessory)
        draw.rectangle((cx - 0.18 * w, y1, cx + 0.18 * w, y1 + 0.05 * h), fill=accessory)
    else:
        draw.chord((head[0], head[1] - 0.01 * h, head[2], head[3]), 180, 360, fill=look.hair)
    if look.accessory == "bag":
        bx = cx + facing * 0.38 * w
        draw.line((cx, top + 0.02 * h, bx, y1 + 0.5 * h), fill=accessory, width=max(1, int(w / 20)))
        draw.rectangle((bx - 0.16 * w, y1 + 0.48 * h, bx + 0.16 * w, y1 + 0.64 * h), fill=accessory)


def _draw_pattern(draw, look: Appearance, torso, colour: Colour) -> None:
    tx1, ty1, tx2, ty2 = torso
    if look.pattern == "stripes":
        step = (ty2 - ty1) / 5
        for k in range(0, 5, 2):
            _cell(draw, (tx1, ty1 + k * step, tx2, ty1 + (k + 1) * step - 1), colour)
    elif look.pattern == "vstripe":
        mid, half = (tx1 + tx2) / 2, (tx2 - tx1) * 0.15
        draw.rectangle((mid - half, ty1, mid + half, ty2), fill=colour)
    elif look.pattern == "logo":
        mid, s = (tx1 + tx2) / 2, (tx2 - tx1) * 0.28
        cy = ty1 + (ty2 - ty1) * 0.38
        draw.ellipse((mid - s, cy - s, mid + s, cy + s), fill=colour)
    elif look.pattern == "checks":
        cw, ch = (tx2 - tx1) / 4, (ty2 - ty1) / 4
        for row in range(4):
            for col in range(row % 2, 4, 2):
                _cell(draw, (tx1 + col * cw, ty1 + row * ch, tx1 + (col + 1) * cw - 1,
                             ty1 + (row + 1) * ch - 1), colour)
    elif look.pattern == "halves":   # a two-colour shirt split down the middle
        draw.rectangle(((tx1 + tx2) / 2, ty1, tx2, ty2), fill=colour)


def _cell(draw, box, colour: Colour) -> None:
    """A pattern's rectangle, at least a pixel wide and high on the smallest people (whose
    cells, one pixel short of the next, would end before they begin)."""
    x1, y1, x2, y2 = box
    draw.rectangle((x1, y1, max(x1, x2), max(y1, y2)), fill=colour)


def draw_occluder(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size) -> None:
    """A pole or a low wall / bench in front of the people."""
    width, height = size
    colour = tuple(int(v) for v in rng.integers(40, 200, 3))
    if rng.random() < 0.5:
        x, w = rng.uniform(0, width), rng.uniform(0.03, 0.07) * width
        draw.rectangle((x, 0, x + w, height), fill=colour)
    else:
        x, w = rng.uniform(-0.2, 0.8) * width, rng.uniform(0.2, 0.45) * width
        draw.rectangle((x, height * rng.uniform(0.78, 0.88), x + w, height), fill=colour)


def finish_image(image: Image.Image, camera: CameraStyle, rng: np.random.Generator) -> Image.Image:
    """What the camera makes of the scene: optical and motion blur, its colour response,
    contrast and saturation, then sensor noise. Steps a style leaves at their neutral value are
    skipped, so the default style's pixels are exactly those of a world without styles."""
    style = camera.world
    if style.blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(style.blur))
    array = np.asarray(image, np.float32)
    if style.motion_blur > 1:
        array = _smear(array, style.motion_blur)
    array = array * camera.gain + camera.offset
    if style.contrast != 1:
        array = (array - MID_GREY) * style.contrast + MID_GREY
    if style.saturation != 1:
        grey = array.mean(axis=2, keepdims=True)
        array = grey + (array - grey) * style.saturation
    array += rng.normal(0, style.noise, array.shape).astype(np.float32)
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def _smear(array: np.ndarray, length: int) -> np.ndarray:
    """Horizontal motion blur: the mean of ``length`` copies shifted by 0 .. length-1 pixels
    (edges repeated), as a camera panning or a slow shutter on walking people draws them."""
    width = array.shape[1]
    padded = np.pad(array, ((0, 0), (length // 2, length - 1 - length // 2), (0, 0)), mode="edge")
    return sum(padded[:, k:k + width] for k in range(length)) / np.float32(length)
