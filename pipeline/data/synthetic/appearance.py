"""Identity appearance model: what makes one synthetic person recognisable across cameras.

An :class:`Appearance` fixes shirt and trouser colours, a shirt pattern, an accessory and the
build (height / width ratio of the person box). Colours come from a small shared palette (the
world style's), so different identities share some colours and Re-ID must combine several cues.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # styles.py builds on this module's palette and patterns
    from .styles import WorldStyle

#: RGB colours people wear (default style); small on purpose so that identities share colours.
PALETTE = (
    (200, 40, 40), (40, 70, 190), (25, 35, 80), (40, 150, 60), (230, 200, 40),
    (235, 235, 235), (30, 30, 30), (130, 130, 130), (240, 130, 30), (120, 50, 150),
    (110, 70, 40), (240, 150, 180), (30, 150, 150), (210, 190, 150),
)
SKIN_TONES = ((240, 200, 170), (200, 150, 110), (150, 100, 70), (90, 60, 40))
HAIR_COLOURS = ((20, 20, 20), (90, 60, 30), (200, 170, 90), (140, 140, 140))
PATTERNS = ("plain", "stripes", "logo", "vstripe")   # of the default style
ACCESSORIES = ("none", "bag", "hat", "backpack")


@dataclass(frozen=True)
class Appearance:
    """Everything that stays the same for one identity in every image."""

    shirt: tuple[int, int, int]
    trousers: tuple[int, int, int]
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    pattern: str                      # one of the style's patterns
    pattern_colour: tuple[int, int, int]
    accessory: str                    # one of ACCESSORIES
    accessory_colour: tuple[int, int, int]
    build: float                      # box height / box width


def _pick(rng: np.random.Generator, options, exclude=None):
    choices = [o for o in options if o != exclude]
    return tuple(choices[int(rng.integers(len(choices)))]) if isinstance(choices[0], tuple) \
        else choices[int(rng.integers(len(choices)))]


def sample_appearance(rng: np.random.Generator, style: WorldStyle) -> Appearance:
    """A random identity of a world in ``style`` (also used for the unlabeled passers-by)."""
    palette = style.palette
    shirt = _pick(rng, palette)
    return Appearance(
        shirt=shirt, trousers=_pick(rng, palette), skin=_pick(rng, SKIN_TONES),
        hair=_pick(rng, HAIR_COLOURS), pattern=_pick(rng, style.patterns),
        pattern_colour=_pick(rng, palette, exclude=shirt), accessory=_pick(rng, ACCESSORIES),
        accessory_colour=_pick(rng, palette), build=float(rng.uniform(*style.build_range)))
