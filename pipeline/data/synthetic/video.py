"""Synthetic footage with known answers: short multi-camera videos in which identities walk.

The people are the identities of the synthetic image world with the same parameters
(:func:`plan_world`: same appearances, the same per-camera backgrounds and colour response),
so a model trained on ``make-synthetic --format prw`` with those parameters (and the same
``--style``) meets familiar cameras. Only the world's TEST identities walk (the models never
trained on them, as in evaluation); each walks through at least two cameras, and unlabeled
passers-by walk too.

Written under ``out``: ``cam1.mp4`` ... (H.264 through PyAV, ``fps`` frames per second,
``seconds`` long) and :data:`ANNOTATIONS`, per video frame the boxes (x1, y1, x2, y2 pixels,
clipped to the frame) and identities (the world's PRW-style pids; :data:`UNLABELED` for a
passer-by) of everyone visible. Same arguments -> the same annotations and pixels.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from ..records import UNLABELED
from .appearance import Appearance, sample_appearance
from .render import draw_occluder, draw_person, finish_image, make_camera_style, random_shape
from .styles import DEFAULT_STYLE, WorldStyle, style_named
from .world import SyntheticWorldError, plan_world, prw_pids

ANNOTATIONS = "annotations.json"
SCHEMA = "synthetic-footage/1"
MARKER = "synthetic.json"          # as the image worlds: marks a folder this generator may reuse
CODEC, CRF = "libx264", 18         # near-lossless, so decoding changes pixels only slightly
PASS_SECONDS = (0.45, 0.8)         # a walk across the frame lasts this fraction of the video
HEIGHT_FRACTION = (0.45, 0.85)     # person height / frame height during one walk
CAMERAS_PER_WALKER = 2
MIN_VISIBLE = (4, 8)               # a clipped box narrower / lower than this is not annotated


@dataclass(frozen=True)
class Walk:
    """One person crossing one camera's view at constant speed and size."""

    camera: int                    # 1-based
    pid: int                       # world pid, or UNLABELED
    look: Appearance
    start: float                   # seconds
    duration: float
    height: float                  # pixels
    foot_y: float                  # pixels: where the feet touch the floor
    leftwards: bool

    def progress(self, t: float) -> float | None:
        """0 when entering, 1 when gone; None outside the walk."""
        u = (t - self.start) / self.duration
        return u if 0.0 <= u <= 1.0 else None


def make_synthetic_video(out, *, identities: int = 60, images: int = 240,
                         size: tuple[int, int] = (320, 240), cameras: int | None = None,
                         seed: int = 0, style: str = DEFAULT_STYLE.name, seconds: float = 12.0,
                         fps: int = 4, walkers: int = 6, passers: int = 3,
                         progress: bool = False) -> Path:
    """Write the videos and :data:`ANNOTATIONS` under ``out``; returns ``out``. ``style`` names
    the world's look (:data:`~.styles.STYLES`); ``cameras`` None: the style's camera count."""
    size = tuple(int(v) for v in size)
    _check(seconds, fps, walkers, size)
    world_style = style_named(style)
    cameras = world_style.cameras if cameras is None else cameras
    world = plan_world(identities=identities, images=images, size=size, cameras=cameras,
                       seed=seed, style=world_style)
    if walkers > len(world.test_ids):
        raise SyntheticWorldError(f"{walkers} walkers but the world has only "
                                  f"{len(world.test_ids)} test identities; use --identities "
                                  f">= {2 * walkers}")
    _, test_pids = prw_pids(len(world.train_ids), len(world.test_ids))
    pid_of = dict(zip(world.test_ids, test_pids))
    rng = np.random.default_rng([seed, 7])
    chosen = sorted(int(i) for i in rng.choice(world.test_ids, walkers, replace=False))
    walks = [w for i in chosen for w in _walks_of(rng, pid_of[i], world.appearances[i],
                                                  cameras, seconds, size)]
    walks += [w for _ in range(passers)
              for w in _walks_of(rng, UNLABELED, sample_appearance(rng, world_style), cameras,
                                 seconds, size, count=1)]
    root = _prepare(Path(out))
    videos = [_write_camera(root, c, walks, size, seed, world_style, (seconds, fps), progress)
              for c in range(1, cameras + 1)]
    params = {"format": "video", "identities": identities, "images": images,
              "size": list(size), "cameras": cameras, "seed": seed, "style": style,
              "seconds": seconds, "fps": fps, "walkers": walkers, "passers": passers}
    (root / ANNOTATIONS).write_text(json.dumps(
        {"schema": SCHEMA, "params": params, "walker_pids": [pid_of[i] for i in chosen],
         "videos": videos}) + "\n")
    (root / MARKER).write_text(json.dumps(params, indent=2) + "\n")
    return root


def _check(seconds, fps, walkers, size) -> None:
    if not seconds > 0 or fps < 1:
        raise SyntheticWorldError(f"need a positive length and at least 1 fps, got "
                                  f"{seconds} s at {fps} fps")
    if walkers < 1:
        raise SyntheticWorldError("need at least one walker")
    if size[0] % 2 or size[1] % 2:
        raise SyntheticWorldError(f"video frames need an even width and height, got "
                                  f"{size[0]}x{size[1]}")


def _walks_of(rng, pid: int, look: Appearance, cameras: int, seconds: float, size,
              count: int = CAMERAS_PER_WALKER) -> list[Walk]:
    """``count`` walks of one person, each on another camera, at random times."""
    width, height = size
    walks = []
    for camera in rng.choice(np.arange(1, cameras + 1), min(count, cameras), replace=False):
        duration = float(rng.uniform(*PASS_SECONDS)) * seconds
        start = float(rng.uniform(0, seconds - duration))
        h = float(rng.uniform(*HEIGHT_FRACTION)) * height
        foot = float(rng.uniform(max(h, 0.6 * height), height * 1.02))
        walks.append(Walk(int(camera), pid, look, start, duration, h, foot,
                          bool(rng.random() < 0.5)))
    return walks


def _position(walk: Walk, t: float, width: int) -> np.ndarray | None:
    """The walk's unclipped box at t: x moves from just outside one edge to the other."""
    u = walk.progress(t)
    if u is None:
        return None
    w = walk.height / walk.look.build
    x1 = -w + (1.0 - u if walk.leftwards else u) * (width + w)
    return np.array([x1, walk.foot_y - walk.height, x1 + w, walk.foot_y])


def _prepare(root: Path) -> Path:
    if root.exists() and not root.is_dir():
        raise SyntheticWorldError(f"{root}: exists and is not a folder")
    if root.is_dir() and any(root.iterdir()) and not (root / MARKER).is_file():
        raise SyntheticWorldError(f"{root}: folder is not empty and holds no synthetic world; "
                                  "choose an empty or new folder")
    if root.is_dir():  # an earlier synthetic world: replace it wholesale
        for child in root.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _camera_view(seed: int, camera: int, size,
                 style: WorldStyle) -> tuple[object, Image.Image, bool, int]:
    """(camera style, background with this camera's static clutter, has occluder, occluder
    seed). The image world's per-frame clutter stays fixed here: it is part of the view."""
    view = make_camera_style(np.random.default_rng([seed, 2, camera]), size, style)
    rng = np.random.default_rng([seed, 8, camera])
    background = Image.fromarray(view.background.astype(np.uint8))
    draw = ImageDraw.Draw(background)
    for _ in range(int(rng.integers(*style.frame_clutter))):
        colour = tuple(int(v) for v in rng.integers(20, 235, 3))
        random_shape(draw, rng, *size, colour)
    return (view, background, bool(rng.random() < style.occluder_chance),
            int(rng.integers(1 << 31)))


def _write_camera(root: Path, camera: int, walks, size, seed, style: WorldStyle, timing,
                  progress) -> dict:
    """One camera's video; ``timing`` is (seconds, fps)."""
    width, height = size
    seconds, fps = timing
    view, background, occluded, occluder_seed = _camera_view(seed, camera, size, style)
    mine = [w for w in walks if w.camera == camera]
    name = f"cam{camera}.mp4"
    container = av.open(str(root / name), "w")
    stream = container.add_stream(CODEC, rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.options = {"crf": str(CRF)}
    stream.codec_context.gop_size = 2 * fps
    frames = []
    count = int(round(seconds * fps))
    for index in tqdm(range(count), desc=name, unit="frame", disable=not progress):
        t = index / fps
        rng = np.random.default_rng([seed, 9, camera, index])
        image, boxes, pids = _render_frame(background, view, mine, t, rng, size, occluded,
                                           occluder_seed)
        frame = av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")
        frame.pts = index
        for packet in stream.encode(frame):
            container.mux(packet)
        frames.append({"frame": index, "time": t, "boxes": boxes, "pids": pids})
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return {"file": name, "camera": f"cam{camera}", "fps": fps, "frames": frames}


def _render_frame(background, view, walks, t, rng, size, occluded, occluder_seed):
    width, height = size
    image = background.copy()
    draw = ImageDraw.Draw(image)
    present = [(w, b) for w in walks if (b := _position(w, t, width)) is not None]
    boxes, pids = [], []
    for walk, box in sorted(present, key=lambda wb: wb[1][3]):  # far ones first
        draw_person(draw, box, walk.look, rng, view.world)
        clipped = np.round(np.clip(box, 0, [width, height, width, height]))
        if clipped[2] - clipped[0] >= MIN_VISIBLE[0] and clipped[3] - clipped[1] >= MIN_VISIBLE[1]:
            boxes.append([float(v) for v in clipped])
            pids.append(int(walk.pid))
    if occluded:
        draw_occluder(draw, np.random.default_rng(occluder_seed), size)
    return finish_image(image, view, rng), boxes, pids


# ------------------------------------------------------------------------------ reading

@dataclass
class FootageTruth:
    """The annotations of a synthetic footage folder, for checking search results."""

    root: Path
    videos: dict[str, dict]            # file name -> {"camera", "fps", frames by index}
    walker_pids: list[int]

    def people(self, source: str, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4) boxes and (N,) pids annotated in one frame of a video (by file name)."""
        entry = self.videos[Path(source).name]["frames"].get(int(frame))
        if entry is None:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
        return (np.asarray(entry["boxes"], np.float32).reshape(-1, 4),
                np.asarray(entry["pids"], np.int64))

    def identity(self, source: str, frame: int, box, min_iou: float = 0.5) -> int | None:
        """The pid of the annotated person ``box`` covers best with IoU >= ``min_iou``
        (UNLABELED for a passer-by); None when it covers nobody that well."""
        boxes, pids = self.people(source, frame)
        if len(boxes) == 0:
            return None
        iou = box_iou_one(np.asarray(box, np.float32), boxes)
        best = int(np.argmax(iou))
        return int(pids[best]) if iou[best] >= min_iou else None


def box_iou_one(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (4,) box with each of (N, 4) boxes."""
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


def read_footage_truth(root) -> FootageTruth:
    root = Path(root)
    path = root / ANNOTATIONS
    if not path.is_file():
        raise SyntheticWorldError(f"{path}: no synthetic footage annotations here")
    data = json.loads(path.read_text())
    if data.get("schema") != SCHEMA:
        raise SyntheticWorldError(f"{path}: schema {data.get('schema')!r}, expected {SCHEMA!r}")
    videos = {v["file"]: {"camera": v["camera"], "fps": v["fps"],
                          "frames": {f["frame"]: f for f in v["frames"]}}
              for v in data["videos"]}
    return FootageTruth(root, videos, list(data["walker_pids"]))
