"""The footage gallery: every detection of a model over indexed footage, in one folder.

Layout of a gallery folder (schema ``person-search-gallery``, version :data:`SCHEMA_VERSION`):

- ``gallery.json`` (the manifest): schema and version, the model that made the embeddings
  (kind, name, sha256 fingerprint), the settings (embedding size, minimum detection score),
  the committed segments in order, and the FAISS index file with its kind. Readers see only
  what it lists.
- ``segments/*.h5``: immutable HDF5 files, one per committed chunk of frames::

    frames/source (F,) UTF-8 absolute path   frames/index (F,) int64 frame number (0: image)
    frames/time (F,) float64 s (NaN: image)  frames/camera (F,) UTF-8
    frames/width, frames/height (F,) int32   frames/offsets (F+1,) int64 detections of frame i
    frames/preview (F,) vlen uint8 JPEG      are rows offsets[i]:offsets[i+1]
    detections/boxes (T,4) float32 x1,y1,x2,y2 frame pixels
    detections/scores (T,) float32           detections/embeddings (T,D) float32, unit norm

- ``index-N.faiss``: the FAISS index over every embedding in manifest order, written with
  ``faiss.write_index`` (:mod:`pipeline.runtime.faiss_index`).
- ``pending/rank-R.json``: the segments an unfinished run of process R has written.

Every file is written beside its final name and moved there with ``os.replace``, and the
manifest is replaced last, so a reader (or a run killed at any instant, ``kill -9``
included) always finds the last complete state. A run first lists its segments in its
pending file; :func:`commit` (after every process has finished) moves them into the manifest
and rebuilds the index. A re-run skips every frame already in a committed or pending segment,
so an interrupted run resumes where it stopped and a run over more sources embeds only what
is new. Detection ids are row numbers in manifest order; they never change when sources are
added.
"""
from __future__ import annotations

import datetime
import fcntl
import functools
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from pipeline.errors import UserError

from pipeline.runtime.faiss_index import INDEX_KINDS, build_index, extend_index, read_index, write_index
from pipeline.runtime.vectors import TEXT, l2_normalize, read_text, text_column

SCHEMA = "person-search-gallery"
SCHEMA_VERSION = 1
MANIFEST = "gallery.json"
SEGMENTS = "segments"
PENDING = "pending"
LOCK = ".lock"
JPEG = h5py.vlen_dtype(np.uint8)


class GalleryError(UserError, ValueError):
    """A gallery folder is missing, malformed, busy or used inconsistently. Names the folder."""


class MissingItemError(GalleryError):
    """A frame, detection or camera the gallery does not hold."""


class ModelMismatchError(GalleryError):
    """The gallery's embeddings come from another model than the one at hand."""


@dataclass(frozen=True)
class ModelInfo:
    """Which model made a gallery's embeddings."""

    kind: str                 # "student" or "teacher"
    name: str                 # what the user gave: a checkpoint or a teacher config path
    fingerprint: str          # sha256 of the weights' content
    settings: str = ""        # how it ran, when not as trained: "size=750 proposals=100 bf16"

    def describe(self) -> str:
        run = f", run with {self.settings}" if self.settings else ""
        return f"{self.kind} {self.name} (weights sha256 {self.fingerprint[:12]}{run})"

    @classmethod
    def from_dict(cls, d: dict) -> "ModelInfo":   # galleries before settings: as trained
        return cls(str(d["kind"]), str(d["name"]), str(d["fingerprint"]),
                   str(d.get("settings", "")))


@dataclass
class FrameBlock:
    """Frames and their detections: the content of one segment (shapes as in the module
    docstring; ``counts`` are detections per frame)."""

    sources: list[str]
    frames: np.ndarray
    times: np.ndarray
    cameras: list[str]
    widths: np.ndarray
    heights: np.ndarray
    previews: list[bytes]
    counts: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    embeddings: np.ndarray

    def __post_init__(self):
        f = len(self.sources)
        t = int(np.sum(self.counts))
        if not (len(self.frames) == len(self.times) == len(self.cameras) == len(self.widths)
                == len(self.heights) == len(self.previews) == len(self.counts) == f):
            raise ValueError("frame columns differ in length")
        if self.boxes.shape != (t, 4) or self.scores.shape != (t,) or len(self.embeddings) != t:
            raise ValueError(f"detection columns do not hold {t} rows")

    def keys(self) -> list[tuple[str, int]]:
        return list(zip(self.sources, (int(i) for i in self.frames)))


# ------------------------------------------------------------------------------ files

def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise GalleryError(f"{path}: unreadable {what} ({e})") from None


def write_segment(path: Path, block: FrameBlock, model: ModelInfo) -> None:
    """One segment file, written beside ``path`` and moved there when whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    dim = block.embeddings.shape[1] if block.embeddings.ndim == 2 else 0
    with h5py.File(tmp, "w") as f:
        f.attrs["schema"], f.attrs["schema_version"] = SCHEMA, SCHEMA_VERSION
        f.attrs["model_fingerprint"] = model.fingerprint
        g = f.create_group("frames")
        g.create_dataset("source", data=text_column(block.sources), dtype=TEXT)
        g.create_dataset("index", data=np.asarray(block.frames, np.int64))
        g.create_dataset("time", data=np.asarray(block.times, np.float64))
        g.create_dataset("camera", data=text_column(block.cameras), dtype=TEXT)
        g.create_dataset("width", data=np.asarray(block.widths, np.int32))
        g.create_dataset("height", data=np.asarray(block.heights, np.int32))
        g.create_dataset("offsets", data=np.r_[0, np.cumsum(block.counts)].astype(np.int64))
        previews = g.create_dataset("preview", (len(block.previews),), dtype=JPEG)
        for i, jpeg in enumerate(block.previews):
            previews[i] = np.frombuffer(jpeg, np.uint8)
        d = f.create_group("detections")
        d.create_dataset("boxes", data=np.asarray(block.boxes, np.float32).reshape(-1, 4))
        d.create_dataset("scores", data=np.asarray(block.scores, np.float32).ravel())
        d.create_dataset("embeddings", data=l2_normalize(block.embeddings.reshape(-1, dim)))
    os.replace(tmp, path)


def _segment_keys(path: Path) -> list[tuple[str, int]]:
    with h5py.File(path, "r") as f:
        return list(zip(read_text(f["frames/source"][()]), f["frames/index"][()].tolist()))


class _Lock:
    """An exclusive lock on a file in the gallery: one writer per name at a time.

    A POSIX record lock (``lockf``) belongs to the process, so it dies with it: decoding
    workers forked while it is held do not keep it alive after a ``kill -9`` (a ``flock``
    would be shared with them)."""

    def __init__(self, directory: Path, name: str):
        self.path = directory / name
        self.file = open(self.path, "a")
        try:
            fcntl.lockf(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.close()
            raise GalleryError(f"{directory}: another index run is writing this gallery") \
                from None

    def release(self) -> None:
        fcntl.lockf(self.file, fcntl.LOCK_UN)
        self.file.close()


# ------------------------------------------------------------------------------ manifest

def read_manifest(directory: Path) -> dict | None:
    """The manifest of ``directory`` (checked), or None when it holds none yet."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    m = _read_json(path, "gallery manifest")
    if m.get("schema") != SCHEMA:
        raise GalleryError(f"{path}: schema {m.get('schema')!r}, expected {SCHEMA!r}")
    if m.get("version") != SCHEMA_VERSION:
        raise GalleryError(f"{path}: gallery schema version {m.get('version')}, this toolkit "
                           f"reads version {SCHEMA_VERSION}; index the footage again")
    return m


def _pending_files(directory: Path) -> list[Path]:
    return sorted((directory / PENDING).glob("rank-*.json"))


def check_same_model(directory: Path, stored: ModelInfo, model: ModelInfo) -> None:
    if (stored.fingerprint, stored.settings) != (model.fingerprint, model.settings):
        raise ModelMismatchError(
            f"gallery {directory} holds embeddings of {stored.describe()}, but this run uses "
            f"{model.describe()}: embeddings of different models (or of one run at other "
            f"settings) cannot be compared; use the gallery's model and settings, or index "
            f"into a new gallery folder")


def _check_settings(directory: Path, m: dict, embedding_dim: int, min_score: float) -> None:
    if m["embedding_dim"] != embedding_dim:
        raise GalleryError(f"gallery {directory} holds {m['embedding_dim']}-d embeddings, the "
                           f"model gives {embedding_dim}-d")
    if abs(m["min_score"] - min_score) > 1e-9:
        raise GalleryError(f"gallery {directory} keeps detections scoring >= {m['min_score']}; "
                           f"this run asks for {min_score}: use the same --min-score, or a new "
                           "gallery folder")


# ------------------------------------------------------------------------------ writing

class GalleryWriter:
    """Adds segments for one process (``rank``) of an index run; :func:`commit` ends the run.

    Opening checks the model and settings against the manifest (or the pending segments of
    an unfinished first run) and takes this rank's lock."""

    def __init__(self, directory, model: ModelInfo, *, embedding_dim: int, min_score: float,
                 rank: int = 0):
        self.directory = Path(directory)
        self.model, self.rank = model, int(rank)
        self.embedding_dim, self.min_score = int(embedding_dim), float(min_score)
        for sub in (SEGMENTS, PENDING):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        self._lock = _Lock(self.directory, f"{LOCK}.rank-{self.rank}")
        try:
            self._check_existing()
        except BaseException:
            self._lock.release()
            raise
        self.pending_path = self.directory / PENDING / f"rank-{self.rank}.json"
        self.pending = (_read_json(self.pending_path, "pending list")["segments"]
                        if self.pending_path.is_file() else [])

    def _check_existing(self) -> None:
        """The committed gallery and any unfinished run must use this model and settings."""
        manifest = read_manifest(self.directory)
        if manifest is not None:
            check_same_model(self.directory, ModelInfo.from_dict(manifest["model"]), self.model)
            _check_settings(self.directory, manifest, self.embedding_dim, self.min_score)
        for path in _pending_files(self.directory):
            p = _read_json(path, "pending list")
            check_same_model(self.directory, ModelInfo.from_dict(p["model"]), self.model)
            _check_settings(self.directory, p, self.embedding_dim, self.min_score)

    def done(self) -> set[tuple[str, int]]:
        """(source, frame) of every frame in a committed or pending segment (all ranks)."""
        names = committed_segment_names(self.directory)
        for path in _pending_files(self.directory):
            names |= {s["file"] for s in _read_json(path, "pending list")["segments"]}
        keys: set[tuple[str, int]] = set()
        for name in sorted(names):
            keys.update(_segment_keys(self.directory / SEGMENTS / name))
        return keys

    def add(self, block: FrameBlock) -> str:
        """Write ``block`` as a segment and list it in this rank's pending file."""
        if len(block.sources) == 0:
            return ""
        if block.embeddings.size and block.embeddings.shape[1] != self.embedding_dim:
            raise GalleryError(f"embeddings are {block.embeddings.shape[1]}-d, the gallery's "
                               f"are {self.embedding_dim}-d")
        name = f"seg-r{self.rank}-{uuid.uuid4().hex[:16]}.h5"
        write_segment(self.directory / SEGMENTS / name, block, self.model)
        self.pending.append({"file": name, "frames": len(block.sources),
                             "detections": int(np.sum(block.counts)),
                             "first": [block.sources[0], int(block.frames[0])]})
        write_json_atomic(self.pending_path, {
            "model": vars(self.model), "embedding_dim": self.embedding_dim,
            "min_score": self.min_score, "segments": self.pending})
        return name

    def close(self) -> None:
        self._lock.release()


def committed_segment_names(directory: Path) -> set[str]:
    m = read_manifest(directory)
    return {s["file"] for s in m["segments"]} if m else set()


def commit(directory, model: ModelInfo, *, embedding_dim: int, min_score: float,
           index_kind: str = "flat", progress: bool = False) -> dict:
    """End an index run: move every pending segment into the manifest (sorted by their first
    frame, so an interrupted and an uninterrupted run commit the same order), bring the FAISS
    index up to date, replace the manifest, then tidy up. Returns the new manifest."""
    directory = Path(directory)
    if index_kind not in INDEX_KINDS:
        raise GalleryError(f"index kind must be one of {INDEX_KINDS}, got {index_kind!r}")
    lock = _Lock(directory, LOCK)
    try:
        old = read_manifest(directory)
        if old is not None:
            check_same_model(directory, ModelInfo.from_dict(old["model"]), model)
        segments = list(old["segments"]) if old else []
        known = {s["file"] for s in segments}
        new = [s for p in _pending_files(directory)
               for s in _read_json(p, "pending list")["segments"] if s["file"] not in known]
        new.sort(key=lambda s: (s["first"][0], s["first"][1]))
        segments += new
        index_entry = _update_index(directory, old, segments, len(new) > 0, index_kind)
        manifest = {"schema": SCHEMA, "version": SCHEMA_VERSION, "model": vars(model),
                    "embedding_dim": int(embedding_dim), "min_score": float(min_score),
                    "segments": segments, "frames": sum(s["frames"] for s in segments),
                    "detections": sum(s["detections"] for s in segments),
                    "index": index_entry, "created": old["created"] if old else _now(),
                    "updated": _now()}
        write_json_atomic(directory / MANIFEST, manifest)
        _tidy(directory, manifest)
        return manifest
    finally:
        lock.release()


def _update_index(directory: Path, old: dict | None, segments: list[dict], grew: bool,
                  kind: str) -> dict:
    """The index entry for ``segments``: the old file when nothing changed, the old index
    plus the new rows for flat / HNSW, else a fresh build (IVF retrains its lists)."""
    total = sum(s["detections"] for s in segments)
    entry = old.get("index") if old else None
    if entry and not grew and entry["kind"] == kind and entry["detections"] == total:
        return entry
    generation = (entry["generation"] + 1) if entry else 1
    name = f"index-{generation}.faiss"
    reuse = (entry and entry["kind"] == kind and kind != "ivf"
             and (directory / entry["file"]).is_file())
    if reuse:
        index = read_index(directory / entry["file"])
        start = entry["detections"]
        extend_index(index, _embeddings_from(directory, segments, start))
    else:
        index = build_index(_embeddings_from(directory, segments, 0), kind)
    write_index(index, directory / name)
    return {"file": name, "kind": kind, "approximate": kind != "flat", "detections": total,
            "generation": generation}


def _embeddings_from(directory: Path, segments: list[dict], start: int) -> np.ndarray:
    """Embeddings of detection rows start: in manifest order."""
    parts, row = [], 0
    dim = None
    for s in segments:
        n = s["detections"]
        with h5py.File(directory / SEGMENTS / s["file"], "r") as f:
            emb = f["detections/embeddings"]
            dim = emb.shape[1]
            if row + n > start:
                parts.append(emb[max(0, start - row):])
        row += n
    if not parts:
        return np.zeros((0, dim or 1), np.float32)
    return np.ascontiguousarray(np.concatenate(parts), np.float32)


def _tidy(directory: Path, manifest: dict) -> None:
    """After a commit: drop pending lists, segments no manifest lists (a run killed between
    writing a segment and listing it), old index files and temporaries."""
    for p in _pending_files(directory):
        p.unlink()
    keep = {s["file"] for s in manifest["segments"]}
    for p in (directory / SEGMENTS).iterdir():
        if p.name not in keep:
            p.unlink()
    for p in directory.glob("index-*.faiss"):
        if p.name != manifest["index"]["file"]:
            p.unlink()
    for p in directory.glob(".*.tmp"):
        p.unlink()


# ------------------------------------------------------------------------------ reading

@dataclass
class Gallery:
    """A committed gallery as its manifest lists it: frame and detection tables in memory,
    embeddings and preview JPEGs read on demand, the FAISS index loaded on first use."""

    directory: Path
    manifest: dict
    model: ModelInfo
    frame_source: list[str]
    frame_index: np.ndarray          # (F,) int64
    frame_time: np.ndarray           # (F,) float64, NaN for images
    frame_camera: list[str]
    frame_width: np.ndarray          # (F,) int32
    frame_height: np.ndarray
    frame_offsets: np.ndarray        # (F+1,) int64
    boxes: np.ndarray                # (T,4) float32
    scores: np.ndarray               # (T,) float32
    detection_frame: np.ndarray      # (T,) int64
    segment_frames: np.ndarray       # (S+1,) first frame row of each segment
    segment_detections: np.ndarray   # (S+1,) first detection row of each segment
    _index: object = field(default=None, repr=False)
    _frame_rows: dict | None = field(default=None, repr=False)

    @property
    def num_frames(self) -> int:
        return len(self.frame_source)

    @property
    def num_detections(self) -> int:
        return len(self.boxes)

    @property
    def index_kind(self) -> str:
        return self.manifest["index"]["kind"]

    @property
    def approximate(self) -> bool:
        return bool(self.manifest["index"]["approximate"])

    @functools.cached_property
    def cameras(self) -> list[str]:
        return sorted(set(self.frame_camera))

    @functools.cached_property
    def frame_camera_id(self) -> np.ndarray:
        """(F,) int: each frame's camera as its position in :attr:`cameras`."""
        row = {c: i for i, c in enumerate(self.cameras)}
        return np.array([row[c] for c in self.frame_camera], np.int64)

    def frame_time_or_none(self, frame_id: int) -> float | None:
        t = float(self.frame_time[frame_id])
        return None if np.isnan(t) else t

    def detections_of(self, frame_id: int) -> np.ndarray:
        return np.arange(self.frame_offsets[frame_id], self.frame_offsets[frame_id + 1])

    def find_frame(self, source: str, frame: int) -> int | None:
        """Row of the frame (source path as stored, frame index), or None."""
        if self._frame_rows is None:
            self._frame_rows = {(s, int(i)): k for k, (s, i) in
                                enumerate(zip(self.frame_source, self.frame_index))}
        return self._frame_rows.get((source, int(frame)))

    def _segment_of(self, row: int, starts: np.ndarray) -> tuple[Path, int]:
        s = int(np.searchsorted(starts, row, side="right") - 1)
        return self.directory / SEGMENTS / self.manifest["segments"][s]["file"], row - int(starts[s])

    def preview(self, frame_id: int) -> bytes:
        """The stored preview JPEG of a frame (b"" when none was stored)."""
        if not 0 <= frame_id < self.num_frames:
            raise MissingItemError(f"gallery {self.directory} has no frame {frame_id}")
        path, row = self._segment_of(frame_id, self.segment_frames)
        with h5py.File(path, "r") as f:
            return bytes(f["frames/preview"][row].tobytes())

    def embeddings(self, rows) -> np.ndarray:
        """(len(rows), D) float32 unit-norm embeddings of the given detection ids."""
        rows = np.asarray(rows, np.int64).ravel()
        out = np.zeros((len(rows), self.manifest["embedding_dim"]), np.float32)
        for k, row in enumerate(rows):
            if not 0 <= row < self.num_detections:
                raise MissingItemError(f"gallery {self.directory} has no detection {row}")
            path, local = self._segment_of(int(row), self.segment_detections)
            with h5py.File(path, "r") as f:
                out[k] = f["detections/embeddings"][local]
        return out

    def index(self):
        """The FAISS index (loaded once); GalleryError when it does not match the tables."""
        if self._index is None:
            entry = self.manifest["index"]
            index = read_index(self.directory / entry["file"])
            if index.ntotal != self.num_detections:
                raise GalleryError(f"{self.directory / entry['file']} holds {index.ntotal} "
                                   f"vectors, the gallery {self.num_detections}: run `index` "
                                   "on this gallery again to rebuild it")
            self._index = index
        return self._index


def open_gallery(directory) -> Gallery:
    """Read a committed gallery; GalleryError (naming the folder) when there is none."""
    directory = Path(directory)
    m = read_manifest(directory) if directory.is_dir() else None
    if m is None:
        hint = (" (an index run is unfinished: run the same `index` command again to finish it)"
                if directory.is_dir() and _pending_files(directory) else "")
        raise GalleryError(f"{directory} is not a gallery: no {MANIFEST}{hint}; build one with "
                           "`python cli.py index --gallery DIR --model MODEL SOURCE...`")
    cols = {k: [] for k in ("source", "index", "time", "camera", "width", "height", "counts",
                            "boxes", "scores")}
    for s in m["segments"]:
        _read_segment_tables(directory / SEGMENTS / s["file"], s, cols)
    counts = np.asarray(np.concatenate(cols["counts"]) if cols["counts"] else [], np.int64)
    frames_per = [s["frames"] for s in m["segments"]]
    dets_per = [s["detections"] for s in m["segments"]]
    cat = lambda k, dtype, shape=(0,): (np.concatenate(cols[k]).astype(dtype)  # noqa: E731
                                        if cols[k] else np.zeros(shape, dtype))
    return Gallery(
        directory=directory, manifest=m, model=ModelInfo.from_dict(m["model"]),
        frame_source=[x for part in cols["source"] for x in part],
        frame_index=cat("index", np.int64), frame_time=cat("time", np.float64),
        frame_camera=[x for part in cols["camera"] for x in part],
        frame_width=cat("width", np.int32), frame_height=cat("height", np.int32),
        frame_offsets=np.r_[0, np.cumsum(counts)].astype(np.int64),
        boxes=cat("boxes", np.float32, (0, 4)), scores=cat("scores", np.float32),
        detection_frame=np.repeat(np.arange(len(counts)), counts),
        segment_frames=np.r_[0, np.cumsum(frames_per)].astype(np.int64),
        segment_detections=np.r_[0, np.cumsum(dets_per)].astype(np.int64))


def _read_segment_tables(path: Path, entry: dict, cols: dict) -> None:
    if not path.is_file():
        raise GalleryError(f"{path}: segment listed in the manifest is missing")
    with h5py.File(path, "r") as f:
        offsets = f["frames/offsets"][()]
        if len(offsets) != entry["frames"] + 1 or offsets[-1] != entry["detections"]:
            raise GalleryError(f"{path}: holds {len(offsets) - 1} frames and {offsets[-1]} "
                               f"detections, the manifest says {entry['frames']} and "
                               f"{entry['detections']}")
        cols["source"].append(read_text(f["frames/source"][()]))
        cols["camera"].append(read_text(f["frames/camera"][()]))
        for k in ("index", "time", "width", "height"):
            cols[k].append(f[f"frames/{k}"][()])
        cols["counts"].append(np.diff(offsets))
        cols["boxes"].append(f["detections/boxes"][()].reshape(-1, 4))
        cols["scores"].append(f["detections/scores"][()])
