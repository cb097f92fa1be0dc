"""Footage: image folders, video files and a release's test frames -> frames to index.

A *source* is one file: an image (one frame, index 0, no time) or a video (decoded with PyAV;
one frame sampled every ``every`` seconds, each keeping its frame index and its time in
seconds from the video's first frame). Sources come from a SOURCE argument:

- a folder, searched recursively for images and videos; the camera is the first sub-folder
  below it (``footage/cam2/x.jpg`` -> ``cam2``), or the folder's own name for files directly
  inside it, unless ``camera`` is given;
- a video or image file; its camera is ``camera`` or the file's stem;
- ``prw:ROOT`` / ``cuhk-sysu:ROOT``: that release's test frames (camera ``c1`` ... for PRW).

Frames are planned first (:func:`plan_frames`: a video's packets are demuxed, not decoded, to
find each sampled frame's index and timestamp) and decoded later by
:class:`FootageFrames`, a torch ``Dataset`` meant for a ``DataLoader`` with workers, so
decoding runs off the main process. Paths are kept as absolute paths (``os.path.abspath``),
which is what the gallery stores as a frame's source.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from . import read_dataset
from .image_files import image_size, load_rgb
from .records import DATASETS, DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov")
DEFAULT_EVERY = 1.0           # seconds between sampled video frames
PREVIEW_MAX_SIDE = 800        # stored preview JPEGs are at most this many pixels on a side
PREVIEW_QUALITY = 85
VIDEO_GROUP = 8               # sampled frames one worker decodes after a single seek


class FootageError(DatasetError):
    """A source cannot be read (missing, not a picture or video, undecodable). Names the file."""


@dataclass(frozen=True)
class Source:
    path: str                 # absolute path of the file
    kind: str                 # "image" or "video"
    camera: str


@dataclass(frozen=True)
class FrameRef:
    """One frame to index. ``pts`` (stream time base) lets a decoder seek to it."""

    source: str               # absolute path of the file
    frame: int                # frame index in the video (presentation order); 0 for an image
    time: float | None        # seconds from the video's first frame; None for an image
    camera: str
    kind: str                 # "image" or "video"
    pts: int | None = None


# ------------------------------------------------------------------------------ sources

def find_sources(spec: str, camera: str | None = None) -> list[Source]:
    """The sources one SOURCE argument names, sorted by path (see the module docstring)."""
    release, _, root = spec.partition(":")
    if root and release in DATASETS:
        return _release_sources(release, root)
    path = Path(spec)
    if path.is_dir():
        return _folder_sources(path, camera)
    if path.is_file():
        kind = _kind(path)
        if kind is None:
            raise FootageError(f"{spec}: not an image ({', '.join(IMAGE_SUFFIXES)}) or a video "
                               f"({', '.join(VIDEO_SUFFIXES)})")
        return [Source(os.path.abspath(path), kind, camera or path.stem)]
    raise FootageError(f"{spec}: no such file or folder (a SOURCE is an image folder, a video "
                       f"file, or prw:ROOT / cuhk-sysu:ROOT)")


def _kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return "image" if suffix in IMAGE_SUFFIXES else "video" if suffix in VIDEO_SUFFIXES else None


def _folder_sources(folder: Path, camera: str | None) -> list[Source]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            kind = _kind(path)
            if kind is None or name.startswith("."):
                continue
            parts = path.relative_to(folder).parts
            cam = camera or (parts[0] if len(parts) > 1 else
                             (path.stem if kind == "video" else folder.resolve().name))
            found.append(Source(os.path.abspath(path), kind, cam))
    if not found:
        raise FootageError(f"{folder}: holds no images ({', '.join(IMAGE_SUFFIXES)}) or videos "
                           f"({', '.join(VIDEO_SUFFIXES)})")
    return sorted(found, key=lambda s: s.path)


def _release_sources(release: str, root: str) -> list[Source]:
    data = read_dataset(release, root)
    return sorted((Source(os.path.abspath(r.path), "image",
                          f"c{r.camera}" if r.camera is not None else release)
                   for r in data.gallery), key=lambda s: s.path)


# ------------------------------------------------------------------------------ planning

def plan_frames(source: Source, every: float = DEFAULT_EVERY) -> list[FrameRef]:
    """The frames of ``source`` to index: the image itself, or a video sampled every ``every``
    seconds (the frame nearest each multiple of ``every``; each frame at most once)."""
    if source.kind == "image":
        image_size(source.path)  # the header must read; pixels are decoded later
        return [FrameRef(source.path, 0, None, source.camera, "image")]
    points = video_sample_points(source.path, every)
    return [FrameRef(source.path, index, time, source.camera, "video", pts)
            for index, pts, time in points]


def _open(path: str):
    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError) as e:
        raise FootageError(f"{path}: video does not open ({e})") from None
    if not container.streams.video:
        container.close()
        raise FootageError(f"{path}: holds no video stream")
    return container


def video_timestamps(path: str) -> tuple[np.ndarray, float]:
    """Every frame's pts in presentation order (from the packets, nothing decoded) and the
    stream's time base in seconds."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        pts = [p.pts for p in container.demux(stream) if p.pts is not None and p.size]
        if not pts:  # no packet timestamps (some AVI files): decode to count
            container.seek(0)
            pts = [f.pts for f in container.decode(stream) if f.pts is not None]
        return np.unique(np.asarray(pts, np.int64)), float(stream.time_base)
    except av.error.FFmpegError as e:
        raise FootageError(f"{path}: video does not decode ({e})") from None
    finally:
        container.close()


def video_sample_points(path: str, every: float) -> list[tuple[int, int, float]]:
    """(frame index, pts, time in s) of the frames nearest 0, every, 2*every, ..."""
    if not every > 0:
        raise FootageError(f"sampling interval must be positive, got {every}")
    pts, base = video_timestamps(path)
    if len(pts) == 0:
        raise FootageError(f"{path}: video holds no frames")
    times = (pts - pts[0]) * base
    targets = np.arange(0.0, times[-1] + 1e-9, every)   # never past the last frame
    right = np.clip(np.searchsorted(times, targets), 0, len(times) - 1)
    left = np.clip(right - 1, 0, len(times) - 1)
    nearest = np.where(np.abs(times[left] - targets) <= np.abs(times[right] - targets),
                       left, right)
    return [(int(i), int(pts[i]), float(times[i])) for i in np.unique(nearest)]


# ------------------------------------------------------------------------------ decoding

def decode_video_frames(path: str, pts_wanted: list[int]) -> list[np.ndarray]:
    """(H, W, 3) uint8 RGB frames with the given pts (ascending), after one seek."""
    wanted = sorted(pts_wanted)
    found: dict[int, np.ndarray] = {}
    container = _open(path)
    try:
        stream = container.streams.video[0]
        container.seek(wanted[0], stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            if frame.pts in pts_wanted and frame.pts not in found:
                found[frame.pts] = frame.to_ndarray(format="rgb24")
            if frame.pts >= wanted[-1]:
                break
    except av.error.FFmpegError as e:
        raise FootageError(f"{path}: video does not decode ({e})") from None
    finally:
        container.close()
    missing = [p for p in wanted if p not in found]
    if missing:
        raise FootageError(f"{path}: frame at pts {missing[0]} did not decode")
    return [found[p] for p in pts_wanted]


def load_frames(refs: list[FrameRef]) -> list[np.ndarray]:
    """Decode frames of ONE source: (H, W, 3) uint8 RGB each, in the order given."""
    if refs[0].kind == "image":
        return [load_rgb(r.source) for r in refs]
    return decode_video_frames(refs[0].source, [r.pts for r in refs])


def preview_jpeg(rgb: np.ndarray, max_side: int = PREVIEW_MAX_SIDE) -> bytes:
    """The frame as a JPEG at most ``max_side`` pixels on its longer side."""
    image = Image.fromarray(rgb)
    scale = max_side / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)),
                              max(1, round(image.height * scale))), Image.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=PREVIEW_QUALITY)
    return out.getvalue()


def group_frames(refs: list[FrameRef], video_group: int = VIDEO_GROUP) -> list[list[int]]:
    """Positions of ``refs`` in groups that one worker decodes together: an image alone, up to
    ``video_group`` consecutive frames of one video (counted from that video's first ref in
    ``refs``, so a list that resumes at a group boundary groups the same way)."""
    groups: list[list[int]] = []
    run = 0
    for i, ref in enumerate(refs):
        same_video = (ref.kind == "video" and groups and refs[groups[-1][-1]].source == ref.source)
        if same_video and run < video_group:
            groups[-1].append(i)
            run += 1
        else:
            groups.append([i])
            run = 1
    return groups


class FootageFrames(Dataset):
    """Item k = group k of :func:`group_frames`: a list of (position in ``refs``, image
    (3, H, W) uint8 tensor, preview JPEG bytes). Decoding and JPEG encoding happen in the
    DataLoader worker that fetches the item."""

    def __init__(self, refs: list[FrameRef], groups: list[list[int]], previews: bool = True):
        self.refs, self.groups, self.previews = refs, groups, previews

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, k: int):
        positions = self.groups[k]
        arrays = load_frames([self.refs[i] for i in positions])
        return [(i, torch.from_numpy(a).permute(2, 0, 1).contiguous(),
                 preview_jpeg(a) if self.previews else b"")
                for i, a in zip(positions, arrays)]
