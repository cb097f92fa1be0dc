"""World styles: what a synthetic world looks like, as a named preset.

Real person-search datasets differ in who is in the picture and how the cameras see them:
clothing and its colours, body shapes, how people stand and walk, how busy the background is,
light and colour casts, blur and compression, occlusion, crowding, how tall people are in the
frame, and how many cameras there are and how often one person passes several. A
:class:`WorldStyle` holds those knobs; a world is a style plus a seed (and its size).
:data:`STYLES` are the presets; ``default`` is the look every earlier world had, pixel for
pixel, so the demo's world and the tests' worlds are unchanged.

Ranges are ``(low, high)``; counts of people are inclusive, counts of shapes exclude ``high``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from pipeline.errors import UserError

from .appearance import PALETTE, PATTERNS

Colour = tuple[int, int, int]
Range = tuple[float, float]


class SyntheticWorldError(UserError, ValueError):
    """The requested world cannot be built (too few images, bad size, unknown style ...)."""


@dataclass(frozen=True)
class WorldStyle:
    """Everything about a world's look that a seed does not pick (see the module docstring)."""

    name: str = "default"
    # -- people: clothing, body, pose
    palette: tuple[Colour, ...] = PALETTE  # what people wear (and what walls are painted)
    patterns: tuple[str, ...] = PATTERNS   # shirt patterns (render._draw_pattern draws them)
    colour_jitter: int = 12                # per-image change of each colour channel (0..255)
    build_range: Range = (2.3, 3.3)        # person box height / width
    leg_spread: Range = (0.0, 0.12)        # stance: gap between the legs / box width
    arm_swing: float = 0.05                # gait: arm swing either way / box width
    # -- scenes: crowding, size in the frame, occlusion
    people_per_image: tuple[int, int] = (2, 6)   # everyone in a scene, passers-by included
    labeled_per_image: tuple[int, int] = (2, 4)  # identities in a scene (before passers-by)
    height_fraction: Range = (0.4, 0.9)    # person height / image height
    max_overlap: float = 0.45              # IoU limit between two people in one scene
    max_cover: float = 0.6                 # limit of the overlap / the smaller box's area
    occluder_chance: float = 0.35          # share of images with a pole or a low wall in front
    # -- background and clutter
    background_clutter: tuple[int, int] = (6, 14)  # static shapes per camera background
    frame_clutter: tuple[int, int] = (2, 6)        # shapes added to each image
    texture: float = 9.0                   # std of the background's blotchy texture (0..255)
    # -- cameras: count, overlap, light, colour, optics, sensor, compression
    cameras: int = 3                       # when the request names no camera count
    appearances: int = 2                   # images each identity is at least in (per split)
    gain_range: Range = (0.8, 1.2)         # per camera and channel: lighting and tint
    offset_range: Range = (-20.0, 20.0)    # per camera brightness offset after the gain
    exposure: float = 1.0                  # every camera's gain is multiplied by this
    colour_cast: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel gain on top
    contrast: float = 1.0                  # stretch about mid-grey after the gain
    saturation: float = 1.0                # 0: grey, 1: as drawn, > 1: more colourful
    blur: float = 0.0                      # Gaussian blur radius in pixels (soft optics)
    motion_blur: int = 0                   # horizontal smear length in pixels (slow shutter)
    noise: float = 4.0                     # sensor noise std (0..255)
    jpeg_quality: int = 90                 # of the written images (video is H.264 at its CRF)


DEFAULT_STYLE = WorldStyle()

# Dark, dull and soft-shaded clothes of a night camera; bright ones of a sunny day.
MUTED = ((70, 70, 75), (40, 40, 45), (110, 105, 100), (25, 30, 45), (90, 80, 70),
         (150, 150, 150), (60, 50, 40), (45, 60, 50), (120, 60, 55), (190, 190, 185))
VIVID = PALETTE + ((255, 60, 130), (0, 200, 255), (160, 255, 60), (255, 100, 0),
                   (100, 0, 255), (255, 230, 0))

STYLES = {s.name: s for s in (
    DEFAULT_STYLE,
    # Many small people on a busy pavement, often behind one another, strongly compressed.
    replace(DEFAULT_STYLE, name="crowded-street", people_per_image=(6, 11),
            labeled_per_image=(3, 5), height_fraction=(0.18, 0.5), max_overlap=0.6,
            max_cover=0.8, occluder_chance=0.7, background_clutter=(12, 22),
            frame_clutter=(4, 10), leg_spread=(0.0, 0.2), cameras=4, appearances=3,
            jpeg_quality=35, noise=5.0),
    # Few big people close to the camera, warm light, soft optics, shop fronts all around.
    replace(DEFAULT_STYLE, name="indoor-mall", people_per_image=(1, 4),
            labeled_per_image=(1, 3), height_fraction=(0.6, 0.97), build_range=(2.1, 2.9),
            colour_cast=(1.15, 1.0, 0.78), exposure=1.05, blur=1.3, background_clutter=(16, 28),
            frame_clutter=(5, 12), texture=14.0, cameras=5, appearances=3, jpeg_quality=80),
    # A dark, noisy, washed-out CCTV camera with a slow shutter; dark and grey clothes.
    replace(DEFAULT_STYLE, name="night-cctv", palette=MUTED, colour_jitter=8,
            exposure=0.5, offset_range=(-30.0, 0.0), gain_range=(0.9, 1.1), saturation=0.3,
            motion_blur=5, noise=11.0, height_fraction=(0.3, 0.8), cameras=4, jpeg_quality=60),
    # Bright, contrasty daylight on a campus: colourful, patterned clothes, all body shapes,
    # two cameras far apart that many people pass.
    replace(DEFAULT_STYLE, name="sunny-campus", palette=VIVID,
            patterns=PATTERNS + ("checks", "halves"), build_range=(1.8, 4.0),
            leg_spread=(0.04, 0.24), arm_swing=0.12, exposure=1.15, contrast=1.35,
            saturation=1.4, offset_range=(-5.0, 25.0), height_fraction=(0.3, 0.9), cameras=2,
            appearances=3, noise=2.0, jpeg_quality=92),
)}


def style_named(name: str) -> WorldStyle:
    """The preset called ``name``; a one-line error listing the presets otherwise."""
    if name not in STYLES:
        raise SyntheticWorldError(f"unknown world style {name!r}; expected one of "
                                  f"{', '.join(STYLES)}")
    return STYLES[name]
