"""Footage: image folders, video files and a release's test frames -> frames to index.

A *source* is one file: an image (one frame, index 0, no time) or a video (decoded with PyAV;
one frame sampled every ``every`` seconds, each keeping its frame index and its time in
seconds from the video's first frame). Sources come from a SOURCE argument:

- a folder, searched recursively for images and videos; the camera is the first sub-folder
  below it (``footage/cam2/x.jpg`` -> ``cam2``), or the folder's own name for files directly
  inside it, unless ``camera`` is given;
- a video or image file; its camera is ``camera`` or the file's stem;
- ``prw:ROOT`` / ``cuhk-sysu:ROOT``: that release's test frames (camera ``c1`` ... for PRW).

Frames are planned first (:func:`plan_source`: a video's packets are demuxed, not decoded, to
find each sampled frame's index and timestamp) and decoded later by
:class:`FootageFrames`, a torch ``Dataset`` meant for a ``DataLoader`` with workers, so
decoding runs off the main process. A damaged video keeps every frame that decodes: a
recording cut off mid-way (fewer packets than its header announces) is decoded once while
planning, to plan only the frames that are there, and its plan says how much is lost
("cam3.mp4: 22 of ~45 frames, stream ends early"); a packet that does not decode costs its
frames only, which :class:`FootageFrames` reports. Paths are kept as absolute paths (``os.path.abspath``),
which is what the gallery stores as a frame's source.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

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

@dataclass(frozen=True)
class SourcePlan:
    """The frames of one source to index, and what of it cannot be: ``lost`` names the file
    and says how much ("cam3.mp4: 22 of ~45 frames, stream ends early"), None when whole."""

    refs: list[FrameRef]
    lost: str | None = None


def plan_source(source: Source, every: float = DEFAULT_EVERY) -> SourcePlan:
    """The frames of ``source`` to index: the image itself, or a video sampled every ``every``
    seconds (the frame nearest each multiple of ``every``; each frame at most once) among the
    frames that decode. FootageError when nothing of it can be read."""
    if source.kind == "image":
        image_size(source.path)  # the header must read; pixels are decoded later
        return SourcePlan([FrameRef(source.path, 0, None, source.camera, "image")])
    timeline = video_timeline(source.path)
    refs = [FrameRef(source.path, index, time, source.camera, "video", pts)
            for index, pts, time in sample_points(timeline, every)]
    return SourcePlan(refs, timeline.lost)


def plan_frames(source: Source, every: float = DEFAULT_EVERY) -> list[FrameRef]:
    """The frames :func:`plan_source` plans, without what was lost."""
    return plan_source(source, every).refs


def _open(path: str):
    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError) as e:
        raise FootageError(f"{path}: video does not open ({e})") from None
    if not container.streams.video:
        container.close()
        raise FootageError(f"{path}: holds no video stream")
    return container


@dataclass(frozen=True)
class VideoTimeline:
    """Every frame of a video to sample from, and what of the video is lost."""

    pts: np.ndarray           # (N,) int64 pts of the frames that decode, presentation order
    index: np.ndarray         # (N,) int64 their frame numbers (counting every packet's frame)
    time_base: float          # seconds per pts unit
    lost: str | None = None   # "PATH: 22 of ~45 frames, stream ends early"; None when whole


def video_timeline(path: str) -> VideoTimeline:
    """The frames of a video from its packets (nothing decoded) when the video is whole. When
    it is not (fewer packets than its header announces, or the packets stop with an error:
    a cut-off recording), every frame is decoded once, to keep each one that decodes."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        packets, cut_short = _packet_pts(container, stream)
        expected = _announced_frames(container, stream)
        pts = packets
        if cut_short or not packets or len(packets) < expected:
            container.seek(0)
            pts = [f.pts for f in _decoded(container, stream) if f.pts is not None]
        pts = np.unique(np.asarray(pts, np.int64))
        every_frame = np.union1d(pts, np.asarray(packets, np.int64))
    finally:
        container.close()
    if len(pts) == 0:
        raise FootageError(f"{path}: no frame of the video decodes")
    lost = None
    if cut_short or len(pts) < expected:
        lost = f"{path}: {len(pts)} of ~{max(expected, len(pts) + 1)} frames, stream ends early"
    return VideoTimeline(pts, np.searchsorted(every_frame, pts), float(stream.time_base), lost)


def _packet_pts(container, stream) -> tuple[list[int], bool]:
    """pts of every packet with data, and whether demuxing stopped on an error."""
    pts = []
    try:
        for p in container.demux(stream):
            if p.pts is not None and p.size:
                pts.append(p.pts)
    except av.error.FFmpegError:
        return pts, True
    return pts, False


def _announced_frames(container, stream) -> int:
    """How many frames the header says the video has: the frame count when the container
    keeps one (MP4, MOV), else duration x frame rate less a frame's rounding; 0 if unknown."""
    if stream.frames:
        return int(stream.frames)
    seconds = (float(stream.duration * stream.time_base) if stream.duration
               else container.duration / av.time_base if container.duration else 0.0)
    rate = float(stream.average_rate or 0)
    return max(0, int(seconds * rate) - 1)


def _decoded(container, stream) -> Iterator[av.VideoFrame]:
    """The frames of ``stream`` from where the container stands, skipping packets that do
    not decode (the frames around a damaged one may) and ending at a cut-off file's end."""
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError:   # the file ends mid-packet: flush what is decoded
            packet = None
        try:
            frames = packet.decode() if packet is not None else stream.codec_context.decode(None)
        except av.error.FFmpegError:
            continue
        yield from frames
        if packet is None:
            return


def sample_points(timeline: VideoTimeline, every: float) -> list[tuple[int, int, float]]:
    """(frame index, pts, time in s) of the timeline's frames nearest 0, every, 2*every, ..."""
    if not every > 0:
        raise FootageError(f"sampling interval must be positive, got {every}")
    pts = timeline.pts
    times = (pts - pts[0]) * timeline.time_base
    targets = np.arange(0.0, times[-1] + 1e-9, every)   # never past the last frame
    right = np.clip(np.searchsorted(times, targets), 0, len(times) - 1)
    left = np.clip(right - 1, 0, len(times) - 1)
    nearest = np.where(np.abs(times[left] - targets) <= np.abs(times[right] - targets),
                       left, right)
    return [(int(timeline.index[i]), int(pts[i]), float(times[i])) for i in np.unique(nearest)]


# ------------------------------------------------------------------------------ decoding

def decode_video_frames(path: str, pts_wanted: list[int]) -> dict[int, np.ndarray]:
    """(H, W, 3) uint8 RGB frames with the given pts, after one seek, by pts: those that
    decode (a damaged packet costs its frames, not the others)."""
    wanted = set(pts_wanted)
    last = max(wanted)
    found: dict[int, np.ndarray] = {}
    container = _open(path)
    try:
        stream = container.streams.video[0]
        container.seek(min(wanted), stream=stream, backward=True, any_frame=False)
        for frame in _decoded(container, stream):
            if frame.pts in wanted and frame.pts not in found:
                found[frame.pts] = frame.to_ndarray(format="rgb24")
            if frame.pts is not None and frame.pts >= last:
                break
    except av.error.FFmpegError as e:   # the seek itself fails
        raise FootageError(f"{path}: video does not decode ({e})") from None
    finally:
        container.close()
    return found


def read_frames(refs: list[FrameRef]) -> list[np.ndarray | None]:
    """Frames of ONE source in the order given: (H, W, 3) uint8 RGB, None for a video frame
    that does not decode. FootageError / DatasetError when the file cannot be read at all."""
    if refs[0].kind == "image":
        return [load_rgb(r.source) for r in refs]
    found = decode_video_frames(refs[0].source, [r.pts for r in refs])
    return [found.get(r.pts) for r in refs]


def load_frames(refs: list[FrameRef]) -> list[np.ndarray]:
    """Frames of ONE source, each one: FootageError when one does not decode."""
    frames = read_frames(refs)
    for ref, frame in zip(refs, frames):
        if frame is None:
            raise FootageError(f"{ref.source}: frame {ref.frame} does not decode")
    return frames


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
    """Item k = group k of :func:`group_frames`: (a list of (position in ``refs``, image
    (3, H, W) uint8 tensor, preview JPEG bytes) for every frame of the group that decodes,
    why the file does not decode at all or None). Decoding and JPEG encoding happen in the
    DataLoader worker that fetches the item; a file that does not decode is not fatal (the
    caller reports it), and its message crosses the worker boundary as text."""

    def __init__(self, refs: list[FrameRef], groups: list[list[int]], previews: bool = True):
        self.refs, self.groups, self.previews = refs, groups, previews

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, k: int):
        positions = self.groups[k]
        try:
            arrays = read_frames([self.refs[i] for i in positions])
        except DatasetError as e:   # FootageError, or an image that does not decode
            return [], str(e)
        return [(i, torch.from_numpy(a).permute(2, 0, 1).contiguous(),
                 preview_jpeg(a) if self.previews else b"")
                for i, a in zip(positions, arrays) if a is not None], None
