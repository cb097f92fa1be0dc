"""A synthetic person-search world written in the real PRW and CUHK-SYSU on-disk formats.

``make_synthetic("prw", out)`` plans a world (:mod:`.world`), renders it (:mod:`.render`) and
writes the images plus the annotation files through the project's own writers, so the readers
that tests exercise are the readers users run on the real releases. ``style=`` names the look of
the world (:mod:`.styles`: crowding, clothes, light, blur, cameras ...); ``default`` is the look
every world had before styles existed.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from ..cuhk_sysu import GALLERY_SIZES, write_cuhk_sysu_annotations
from ..prw import write_prw_annotations
from ..records import UNLABELED, ImageRecord, PersonSearchData, QueryGallery, QueryRecord
from .render import draw_occluder, draw_person, finish_image, make_camera_style, random_shape
from .styles import DEFAULT_STYLE, STYLES, WorldStyle, style_named
from .world import (SyntheticWorldError, World, parse_size, plan_world, prw_pids)

FORMATS = ("prw", "cuhk-sysu")
MARKER = "synthetic.json"      # parameters of the world; marks a folder this generator may reuse
PRW_FRAME_STEP = 25            # frame numbers advance like a sampled video

__all__ = ["make_synthetic", "generate", "SyntheticWorldError", "parse_size", "FORMATS",
           "STYLES", "WorldStyle", "style_named", "marked_style"]


def make_synthetic(fmt: str, out, *, identities: int = 60, images: int = 240,
                   size: tuple[int, int] = (320, 240), cameras: int | None = None,
                   seed: int = 0, style: str = DEFAULT_STYLE.name,
                   progress: bool = False) -> Path:
    """Write a synthetic dataset in format ``fmt`` ("prw" | "cuhk-sysu") and world style
    ``style`` (a name in :data:`STYLES`) under ``out``; returns the dataset root. ``cameras``
    None: the style's camera count. Same arguments -> byte-identical files."""
    return generate(fmt, out, identities=identities, images=images, size=size,
                    cameras=cameras, seed=seed, style=style, progress=progress).root


def generate(fmt: str, out, *, identities: int = 60, images: int = 240,
             size: tuple[int, int] = (320, 240), cameras: int | None = None, seed: int = 0,
             style: str = DEFAULT_STYLE.name, progress: bool = False) -> PersonSearchData:
    """:func:`make_synthetic`, returning what the readers should hand back for it."""
    if fmt not in FORMATS:
        raise SyntheticWorldError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    world_style = style_named(style)
    size = tuple(int(v) for v in size)
    cameras = world_style.cameras if cameras is None else cameras
    world = plan_world(identities=identities, images=images, size=size, cameras=cameras,
                       seed=seed, style=world_style)
    if fmt == "cuhk-sysu":
        pool = sum(s.split == "test" for s in world.scenes)
        if pool - 1 < GALLERY_SIZES[0]:
            raise SyntheticWorldError(
                f"the CUHK-SYSU test pool would hold {pool} images, but TestG50 needs at least "
                f"{GALLERY_SIZES[0] + 1}; use --images >= {2 * (GALLERY_SIZES[0] + 1)}")
    root = _prepare_root(Path(out))
    params = {"format": fmt, "identities": identities, "images": images, "size": list(size),
              "cameras": cameras, "seed": seed, "style": style}
    names = _names(fmt, world, seed)
    image_dir = root / ("frames" if fmt == "prw" else "Image/SSM")
    image_dir.mkdir(parents=True, exist_ok=True)
    _render_all(world, names, image_dir, seed, progress)
    dataset = (_prw_records if fmt == "prw" else _cuhk_records)(world, names, image_dir, root, seed)
    if fmt == "prw":
        write_prw_annotations(root, dataset.train, dataset.gallery, dataset.queries)
    else:
        write_cuhk_sysu_annotations(root, dataset.train, dataset.gallery, dataset.queries,
                                    dataset.query_galleries)
    (root / MARKER).write_text(json.dumps(params, indent=2) + "\n")
    return dataset


def _prepare_root(root: Path) -> Path:
    if root.exists() and not root.is_dir():
        raise SyntheticWorldError(f"{root}: exists and is not a folder")
    if root.is_dir() and any(root.iterdir()) and not (root / MARKER).is_file():
        raise SyntheticWorldError(f"{root}: folder is not empty and holds no synthetic dataset; "
                                  "choose an empty or new folder")
    if (root / MARKER).is_file():  # an earlier synthetic world: replace it wholesale
        for child in ("frames", "annotations", "Image", "annotation"):
            if (root / child).exists():
                shutil.rmtree(root / child)
    root.mkdir(parents=True, exist_ok=True)
    return root


def _names(fmt: str, world: World, seed: int) -> list[str]:
    if fmt == "prw":
        sequence = {"train": 1, "test": 2}
        return [f"c{s.camera}s{sequence[s.split]}_{1 + s.index * PRW_FRAME_STEP:06d}.jpg"
                for s in world.scenes]
    numbers = np.random.default_rng([seed, 3]).permutation(len(world.scenes)) + 1
    return [f"s{n}.jpg" for n in numbers]


def marked_style(root) -> str | None:
    """The style name recorded in a synthetic world's marker (worlds made before styles existed
    are ``default``); None when ``root`` holds no synthetic world."""
    marker = Path(root) / MARKER
    if not marker.is_file():
        return None
    return json.loads(marker.read_text()).get("style", DEFAULT_STYLE.name)


def _render_all(world: World, names, image_dir: Path, seed: int, progress: bool) -> None:
    style = world.style
    cameras = {c: make_camera_style(np.random.default_rng([seed, 2, c]), world.size, style)
               for c in range(1, world.cameras + 1)}
    for scene, name in tqdm(list(zip(world.scenes, names)), desc="rendering", unit="image",
                            disable=not progress):
        rng = np.random.default_rng([seed, 1, scene.index])
        camera = cameras[scene.camera]
        image = Image.fromarray(camera.background.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(*style.frame_clutter))):
            colour = tuple(int(v) for v in rng.integers(20, 235, 3))
            random_shape(draw, rng, *world.size, colour)
        looks = iter(scene.passer_looks)
        people = [(p, world.appearances[p.identity] if p.identity is not None else next(looks))
                  for p in scene.people]
        for person, look in sorted(people, key=lambda pl: pl[0].draw_box[3]):  # far ones first
            draw_person(draw, person.draw_box, look, rng, style)
        if scene.occluder:
            draw_occluder(draw, rng, world.size)
        finish_image(image, camera, rng).save(image_dir / name, quality=style.jpeg_quality)


def _record(scene, name: str, image_dir: Path, size, pid_of, camera) -> ImageRecord:
    boxes = np.stack([p.box for p in scene.people]).astype(np.float32).reshape(-1, 4)
    pids = np.array([UNLABELED if p.identity is None else pid_of[p.identity]
                     for p in scene.people], np.int64)
    return ImageRecord(name=name, path=image_dir / name, width=size[0], height=size[1],
                       boxes=boxes, pids=pids, camera=camera)


def _query_choice(world: World, identity: int, split: str, rng):
    """(scene, person) of a query: another image of the identity exists, ideally on another
    camera, and the query box is not cut by the frame if that can be helped."""
    seen = [(s, p) for s, p in world.appearances_of(identity) if s.split == split]
    other_cam = [(s, p) for s, p in seen if any(t.camera != s.camera for t, _ in seen)]
    pool = other_cam or seen
    whole = [(s, p) for s, p in pool if not p.cut] or pool
    return whole[int(rng.integers(len(whole)))]


def _prw_queries(world: World, identity: int, rng):
    """PRW queries of one test identity: one (scene, person) per camera it is seen on, when it
    is also seen on another camera (so every query has cross-camera matches); else a single
    :func:`_query_choice`. Uncut boxes are preferred."""
    seen = [(s, p) for s, p in world.appearances_of(identity) if s.split == "test"]
    cameras = sorted({s.camera for s, _ in seen})
    if len(cameras) < 2:
        return [_query_choice(world, identity, "test", rng)]
    picks = []
    for camera in cameras:
        here = [(s, p) for s, p in seen if s.camera == camera]
        whole = [(s, p) for s, p in here if not p.cut] or here
        picks.append(whole[int(rng.integers(len(whole)))])
    return picks


def _prw_records(world: World, names, image_dir, root, seed) -> PersonSearchData:
    train_pids, test_pids = prw_pids(len(world.train_ids), len(world.test_ids))
    pid_of = {**dict(zip(world.train_ids, train_pids)), **dict(zip(world.test_ids, test_pids))}
    recs = {s.index: _record(s, names[s.index], image_dir, world.size, pid_of, s.camera)
            for s in world.scenes}
    rng = np.random.default_rng([seed, 4])
    queries = [QueryRecord(image=names[scene.index], box=person.box.astype(np.float32),
                           pid=pid_of[identity], camera=scene.camera)
               for identity in world.test_ids
               for scene, person in _prw_queries(world, identity, rng)]
    return PersonSearchData(
        dataset="prw", root=root, train=[recs[s.index] for s in world.scenes if s.split == "train"],
        gallery=[recs[s.index] for s in world.scenes if s.split == "test"], queries=queries)


def _cuhk_records(world: World, names, image_dir, root, seed) -> PersonSearchData:
    rng = np.random.default_rng([seed, 4])
    pid_of = {identity: k + 1 for k, identity in enumerate(world.train_ids)}
    pid_of.update({identity: q + 1 for q, identity in enumerate(world.test_ids)})
    train = [_record(s, names[s.index], image_dir, world.size, pid_of, None)
             for s in world.scenes if s.split == "train"]
    pool_scenes = [s for s in world.scenes if s.split == "test"]
    pool = [_record(s, names[s.index], image_dir, world.size, pid_of, None) for s in pool_scenes]
    queries, picks = [], []
    for identity in world.test_ids:
        scene, person = _query_choice(world, identity, "test", rng)
        queries.append(QueryRecord(image=names[scene.index], box=person.box.astype(np.float32),
                                   pid=pid_of[identity]))
        picks.append((identity, scene))
    sizes = [n for n in GALLERY_SIZES if n <= len(pool) - 1]
    galleries = {n: [] for n in sizes}
    for identity, query_scene in picks:
        positives = [(names[s.index], p.box) for s in pool_scenes if s is not query_scene
                     for p in s.people if p.identity == identity]
        with_id = {s.index for s in pool_scenes if any(p.identity == identity for p in s.people)}
        negatives = [names[s.index] for s in pool_scenes if s.index not in with_id]
        negatives = [negatives[i] for i in rng.permutation(len(negatives))]
        for n in sizes:
            if len(positives) > n:
                raise SyntheticWorldError(f"an identity appears in {len(positives)} pool images, "
                                          f"more than the gallery size {n}; use more identities")
            extra = negatives[: n - len(positives)]
            boxes = np.full((n, 4), np.nan, np.float32)
            boxes[: len(positives)] = [b for _, b in positives]
            galleries[n].append(QueryGallery(images=tuple([nm for nm, _ in positives] + extra),
                                             boxes=boxes))
    return PersonSearchData(dataset="cuhk-sysu", root=root, train=train, gallery=pool,
                            queries=queries, query_galleries=galleries)
