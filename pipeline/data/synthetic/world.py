"""Sampling a synthetic person-search world: identities, cameras, scenes, splits, queries.

The world is planned first (who stands where in which image) and rendered afterwards, so the
records the generator intends are known exactly and can be compared with what the readers
return. Boxes are integer-valued float32 ``(x1, y1, x2, y2)`` pixels, clipped to the image.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .appearance import Appearance, sample_appearance
from .styles import DEFAULT_STYLE, SyntheticWorldError, WorldStyle

MAX_CUT = 0.3                      # at most this fraction of a box may leave the frame
PLACEMENT_TRIES = 30
PRW_LARGE_PID = 932                # PRW's training ids end with 932 (released ids skip numbers)
PRW_SKIP_EVERY = 5                 # leave out every 5th id number, as the release has gaps


@dataclass
class Person:
    identity: int | None               # index into World.appearances; None for a passer-by
    box: np.ndarray                    # (4,) float32 x1, y1, x2, y2 (clipped)
    draw_box: np.ndarray               # (4,) float the full, unclipped body
    cut: bool                          # partly outside the frame


@dataclass
class Scene:
    index: int
    camera: int                        # 1-based
    split: str                         # "train" or "test"
    people: list[Person] = field(default_factory=list)
    passer_looks: list[Appearance] = field(default_factory=list)
    occluder: bool = False


@dataclass
class World:
    size: tuple[int, int]              # (W, H)
    cameras: int
    style: WorldStyle
    appearances: list[Appearance]      # one per identity
    train_ids: list[int]               # identity indices of the train split
    test_ids: list[int]
    scenes: list[Scene]

    def appearances_of(self, identity: int) -> list[tuple[Scene, Person]]:
        return [(s, p) for s in self.scenes for p in s.people if p.identity == identity]


def parse_size(text: str) -> tuple[int, int]:
    """'320x240' -> (320, 240)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise SyntheticWorldError(f"size must be WIDTHxHEIGHT such as 320x240, got {text!r}")
    return int(parts[0]), int(parts[1])


def check_request(identities: int, images: int, size, cameras: int,
                  style: WorldStyle) -> None:
    width, height = size
    if identities < 4:
        raise SyntheticWorldError(f"need at least 4 identities (2 per split), got {identities}")
    if images < identities:
        raise SyntheticWorldError(f"{images} images are too few for {identities} identities: "
                                  "each identity needs several images; use --images >= "
                                  f"{identities}")
    if cameras < 2:
        raise SyntheticWorldError(
            f"need at least 2 cameras (identities cross cameras), got {cameras}")
    if width < 48 or height < 48:
        raise SyntheticWorldError(f"image size {width}x{height} is too small (at least 48x48)")
    per_split, scenes = identities - identities // 2, images // 2  # the fuller split
    if per_split * style.appearances > scenes * style.people_per_image[1] \
            or style.appearances > scenes:
        raise SyntheticWorldError(
            f"{images} images cannot hold {identities} identities {style.appearances} times "
            f"each in style {style.name!r}; use more --images or fewer --identities")


def _overlaps(a: np.ndarray, b: np.ndarray, style: WorldStyle) -> bool:
    """Whether two boxes overlap more than the style's max_overlap (IoU) or max_cover (of the
    smaller box)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])
    union = area_a + area_b - inter
    return inter > style.max_overlap * union or inter > style.max_cover * min(area_a, area_b)


def _place(rng, size, build: float, taken: list[np.ndarray], style: WorldStyle):
    """(draw box, clipped box, cut) of one person not overlapping ``taken`` too much."""
    width, height = size
    for _ in range(PLACEMENT_TRIES):
        h = rng.uniform(*style.height_fraction) * height
        w = h / build
        x1 = rng.uniform(-MAX_CUT * w, width - (1 - MAX_CUT) * w)
        y1 = rng.uniform(-0.1 * h, height - 0.9 * h) if h < height else rng.uniform(-0.1 * h, 0)
        draw = np.array([x1, y1, x1 + w, y1 + h])
        box = np.round(np.clip(draw, 0, [width, height, width, height])).astype(np.float32)
        if box[2] - box[0] < 4 or box[3] - box[1] < 8:
            continue
        if not any(_overlaps(box, t, style) for t in taken):
            cut = bool((draw[[0, 1]] < 0).any() or draw[2] > width or draw[3] > height)
            return draw, box, cut
    return None


def _assign(rng, scene_ids: list[int], identities: list[int], cameras: dict[int, int],
            style: WorldStyle):
    """Identities per scene: each in >= style.appearances scenes on >= 2 cameras, never twice."""
    low, high = style.labeled_per_image
    capacity = {s: int(rng.integers(low, high + 1)) for s in scene_ids}
    members: dict[int, list[int]] = {s: [] for s in scene_ids}
    for identity in identities:
        used_cams: set[int] = set()
        for _ in range(style.appearances):
            free = [s for s in scene_ids if identity not in members[s]
                    and len(members[s]) < style.people_per_image[1]]
            fresh = [s for s in free if cameras[s] not in used_cams] or free
            roomy = [s for s in fresh if len(members[s]) < capacity[s]] or fresh
            least = min(len(members[s]) for s in roomy)
            choice = [s for s in roomy if len(members[s]) == least]
            s = choice[int(rng.integers(len(choice)))]
            members[s].append(identity)
            used_cams.add(cameras[s])
    for s in scene_ids:  # fill the remaining labeled slots at random
        while len(members[s]) < capacity[s]:
            others = [i for i in identities if i not in members[s]]
            if not others:
                break
            members[s].append(others[int(rng.integers(len(others)))])
    return members


def plan_world(*, identities: int, images: int, size, cameras: int, seed: int,
               style: WorldStyle = DEFAULT_STYLE) -> World:
    """Sample everything except pixels: identities, camera of each scene, who stands where."""
    check_request(identities, images, size, cameras, style)
    rng = np.random.default_rng(seed)
    appearances = [sample_appearance(rng, style) for _ in range(identities)]
    order = rng.permutation(identities)
    train_ids = sorted(int(i) for i in order[: identities // 2])
    test_ids = sorted(int(i) for i in order[identities // 2:])
    n_train = images // 2
    split_of = ["train"] * n_train + ["test"] * (images - n_train)
    scenes = []
    for i in range(images):
        camera = 1 + (i % cameras) if i < cameras * 2 else 1 + int(rng.integers(cameras))
        scenes.append(Scene(index=i, camera=camera, split=split_of[i]))
    cams = {s.index: s.camera for s in scenes}
    for split, ids in (("train", train_ids), ("test", test_ids)):
        scene_ids = [s.index for s in scenes if s.split == split]
        members = _assign(rng, scene_ids, ids, cams, style)
        for s in scene_ids:
            _populate(rng, scenes[s], members[s], appearances, size, style)
    return World(size=tuple(size), cameras=cameras, style=style, appearances=appearances,
                 train_ids=train_ids, test_ids=test_ids, scenes=scenes)


def _populate(rng, scene: Scene, members: list[int], appearances, size,
              style: WorldStyle) -> None:
    low, high = style.people_per_image
    extra = int(rng.integers(0, high - len(members) + 1))
    extra = max(extra, low - len(members))
    taken: list[np.ndarray] = []
    for identity in members:
        placed = _place(rng, size, appearances[identity].build, taken, style)
        while placed is None:  # crowded: loosen the overlap rule rather than drop an identity
            placed = _place(rng, size, appearances[identity].build, [], style)
        draw, box, cut = placed
        taken.append(box)
        scene.people.append(Person(identity, box, draw, cut))
    for _ in range(extra):
        look = sample_appearance(rng, style)
        placed = _place(rng, size, look.build, taken, style)
        if placed is None:
            continue
        draw, box, cut = placed
        taken.append(box)
        scene.people.append(Person(None, box, draw, cut))
        scene.passer_looks.append(look)
    scene.occluder = bool(rng.random() < style.occluder_chance)


def prw_pids(n_train: int, n_test: int) -> tuple[list[int], list[int]]:
    """Non-contiguous raw ids like PRW's: every PRW_SKIP_EVERY-th number is left out and the
    last training id is PRW_LARGE_PID; the test ids follow, disjoint from the training ids."""
    pids, n = [], 0
    while len(pids) < n_train + n_test:
        n += 1
        if n % PRW_SKIP_EVERY and n != PRW_LARGE_PID:
            pids.append(n)
    train, test = pids[:n_train], pids[n_train:]
    if train:
        train[-1] = PRW_LARGE_PID
    return train, test
