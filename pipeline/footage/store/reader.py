"""Reading a committed gallery: frame and detection tables in memory, embeddings and preview
JPEGs read from the segments on demand, the FAISS index loaded on first use."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from cache.hdf5 import read_text
from pipeline.runtime.faiss_index import read_index, read_ondisk
from pipeline.runtime.types import ModelInfo

from .damage import INDEX_FIX, SEGMENT_FIX, damaged, reading_index, reading_segment
from .manifest import (MANIFEST, SEGMENTS, GalleryError, Manifest, MissingItemError,
                       SegmentEntry, pending_files, read_manifest)
from .ondisk import (FOLDER, RESCORE, ivfpq_files, lists_data_problem, read_rescore_rows,
                     read_rows, rescore_record)
from .tracks_file import track_files


@dataclass
class Gallery:
    """A committed gallery as its manifest lists it: frame and detection tables in memory,
    embeddings and preview JPEGs read on demand, the FAISS index loaded on first use."""

    directory: Path
    manifest: Manifest
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
    def embedding_dim(self) -> int:
        return self.manifest.embedding_dim

    @property
    def index_kind(self) -> str:
        return self.manifest.index.kind

    @property
    def approximate(self) -> bool:
        return self.manifest.index.approximate

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
        return self.directory / SEGMENTS / self.manifest.segments[s].file, row - int(starts[s])

    def preview(self, frame_id: int) -> bytes:
        """The stored preview JPEG of a frame (b"" when none was stored)."""
        if not 0 <= frame_id < self.num_frames:
            raise MissingItemError(f"gallery {self.directory} has no frame {frame_id}")
        path, row = self._segment_of(frame_id, self.segment_frames)
        with reading_segment(self.directory, path), h5py.File(path, "r") as f:
            return bytes(f["frames/preview"][row].tobytes())

    def embeddings(self, rows) -> np.ndarray:
        """(len(rows), D) float32 unit-norm embeddings of the given detection ids."""
        rows = np.asarray(rows, np.int64).ravel()
        bad = rows[(rows < 0) | (rows >= self.num_detections)]
        if len(bad):
            raise MissingItemError(f"gallery {self.directory} has no detection {bad[0]}")
        if len(rows) == 0:
            return np.zeros((0, self.embedding_dim), np.float32)
        record = rescore_record(self.manifest)
        if record is not None:       # one mapped file, the rows of the segments in row order
            return read_rescore_rows(self.directory, record, rows)
        return read_rows(self.directory, self.manifest.segments, rows)

    @property
    def rescored(self) -> bool:
        """Whether a search re-scores the index's candidates with the stored embeddings."""
        return self.index_kind == "ivfpq"

    def index(self):
        """The FAISS index (loaded once; ivfpq lists mapped from disk); DamagedGalleryError
        when it is unreadable or does not match the tables."""
        if self._index is None:
            path = self.directory / self.manifest.index.file
            with reading_index(self.directory, path):
                index = read_ondisk(path) if self.rescored else read_index(path)
            problem = (f"holds {index.ntotal} vectors, the gallery {self.num_detections}"
                       if index.ntotal != self.num_detections else
                       lists_data_problem(path, index) if self.rescored else None)
            if problem:
                raise damaged(self.directory, path, problem, INDEX_FIX)
            self._index = index
        return self._index


def _bytes(paths) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


def disk_usage(directory: Path, manifest: Manifest) -> dict:
    """Bytes on disk per part of a committed gallery: manifest, segments, index, the ivfpq
    index's re-scoring file (apart from the index: embeddings, not codes), tracks."""
    index = manifest.index
    rescore = index.params.get(RESCORE, {}).get("file") if index.kind == "ivfpq" else None
    index_files = ([directory / index.file] if index.kind != "ivfpq" else
                   [directory / FOLDER / name for name in ivfpq_files(index) - {rescore}])
    return {"manifest": _bytes([directory / MANIFEST]),
            "segments": _bytes(directory / SEGMENTS / s.file for s in manifest.segments),
            "index": _bytes(index_files),
            "rescore": _bytes([directory / FOLDER / rescore] if rescore else []),
            "tracks": _bytes(directory / name for name in track_files(manifest.tracks))}


def gallery_summary(g: Gallery) -> dict:
    """What `gallery info` prints and the app's header shows: counts, cameras, the model, the
    index kind and parameters, the tracks (None: none stored), bytes on disk per part."""
    index, tracks = g.manifest.index, g.manifest.tracks
    return {"gallery": str(g.directory), "frames": g.num_frames,
            "detections": g.num_detections, "cameras": g.cameras,
            "model": g.model.to_dict(), "embedding_dim": g.embedding_dim,
            "index": {"kind": index.kind, "approximate": index.approximate,
                      "rescored": g.rescored, "generation": index.generation,
                      **index.params},
            "tracks": None if tracks is None else {"tracks": tracks.tracks, "kind": tracks.kind,
                                                   "pooling": tracks.pooling},
            "bytes": disk_usage(g.directory, g.manifest),
            "created": g.manifest.created, "updated": g.manifest.updated}


def open_gallery(directory) -> Gallery:
    """Read a committed gallery; GalleryError (naming the folder) when there is none."""
    directory = Path(directory)
    m = read_manifest(directory) if directory.is_dir() else None
    if m is None:
        hint = (" (an index run is unfinished: run the same `index` command again to finish it)"
                if directory.is_dir() and pending_files(directory) else "")
        raise GalleryError(f"{directory} is not a gallery: no {MANIFEST}{hint}; build one with "
                           "`python cli.py index --gallery DIR --model MODEL SOURCE...`")
    return read_gallery(directory, m)


def read_gallery(directory: Path, m: Manifest) -> Gallery:
    """The gallery of the segments ``m`` lists (a manifest not written yet, or a part of one:
    a commit reads the groups it links into tracks this way)."""
    cols = {k: [] for k in ("source", "index", "time", "camera", "width", "height", "counts",
                            "boxes", "scores")}
    for s in m.segments:
        _read_segment_tables(directory, s, cols)
    counts = np.asarray(np.concatenate(cols["counts"]) if cols["counts"] else [], np.int64)
    frames_per = [s.frames for s in m.segments]
    dets_per = [s.detections for s in m.segments]
    cat = lambda k, dtype, shape=(0,): (np.concatenate(cols[k]).astype(dtype)  # noqa: E731
                                        if cols[k] else np.zeros(shape, dtype))
    return Gallery(
        directory=directory, manifest=m, model=m.model,
        frame_source=[x for part in cols["source"] for x in part],
        frame_index=cat("index", np.int64), frame_time=cat("time", np.float64),
        frame_camera=[x for part in cols["camera"] for x in part],
        frame_width=cat("width", np.int32), frame_height=cat("height", np.int32),
        frame_offsets=np.r_[0, np.cumsum(counts)].astype(np.int64),
        boxes=cat("boxes", np.float32, (0, 4)), scores=cat("scores", np.float32),
        detection_frame=np.repeat(np.arange(len(counts)), counts),
        segment_frames=np.r_[0, np.cumsum(frames_per)].astype(np.int64),
        segment_detections=np.r_[0, np.cumsum(dets_per)].astype(np.int64))


def _read_segment_tables(directory: Path, entry: SegmentEntry, cols: dict) -> None:
    path = directory / SEGMENTS / entry.file
    with reading_segment(directory, path), h5py.File(path, "r") as f:
        offsets = f["frames/offsets"][()]
        if len(offsets) != entry.frames + 1 or offsets[-1] != entry.detections:
            raise damaged(directory, path, f"holds {len(offsets) - 1} frames and "
                          f"{offsets[-1]} detections, the manifest says {entry.frames} and "
                          f"{entry.detections}", SEGMENT_FIX)
        cols["source"].append(read_text(f["frames/source"][()]))
        cols["camera"].append(read_text(f["frames/camera"][()]))
        for k in ("index", "time", "width", "height"):
            cols[k].append(f[f"frames/{k}"][()])
        cols["counts"].append(np.diff(offsets))
        cols["boxes"].append(f["detections/boxes"][()].reshape(-1, 4))
        cols["scores"].append(f["detections/scores"][()])
