"""Writing a gallery: segments of one index run per process, then one commit.

Every file is written beside its final name and moved there whole (:mod:`pipeline.files`), and
the manifest is replaced last, so a reader (or a run killed at any instant, ``kill -9``
included) always finds the last complete state. A run first lists its segments in its pending
file; :func:`commit` (after every process has finished) moves them into the manifest and brings
the index up to date. A re-run skips every frame already in a committed or pending segment, so
an interrupted run resumes where it stopped and a run over more sources embeds only what is
new. Detection ids are row numbers in manifest order; they never change when sources are
added.
"""
from __future__ import annotations

import fcntl
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np

from cache.hdf5 import TEXT, read_text, text_column
from pipeline.arrays import l2_normalize
from pipeline.files import TEMP_GLOB, atomic_path, link_or_copy, write_json_atomic
from pipeline.runtime.faiss_index import INDEX_KINDS, build_index, extend_index, read_index, \
    write_index
from pipeline.runtime.types import Detections

from .damage import reading_index, reading_segment
from .manifest import (LOCK, MANIFEST, PENDING, SCHEMA, SCHEMA_VERSION, SEGMENTS, GalleryError,
                       IndexEntry, Manifest, PendingList, RunHeader, SegmentEntry, TracksEntry,
                       now, pending_files, read_manifest, read_pending)
from .ondisk import FOLDER as ONDISK
from .ondisk import (RESCORE, Training, gallery_training, ivfpq_files, merge_ivfpq_shards,
                     update_ivfpq, update_rescore)
from .reader import read_gallery
from .tracks_file import (TrackMaker, read_track_table, track_files, track_index_kind,
                          write_track_table)

JPEG = h5py.vlen_dtype(np.uint8)
DEFAULT_INDEX_KIND = "flat"


@dataclass
class FrameBlock:
    """Frames and their detections: the content of one segment (shapes as in the manifest
    module's docstring); ``detections`` are grouped per frame."""

    sources: list[str]
    frames: np.ndarray
    times: np.ndarray
    cameras: list[str]
    widths: np.ndarray
    heights: np.ndarray
    previews: list[bytes]
    detections: Detections

    def __post_init__(self):
        f = len(self.sources)
        if not (len(self.frames) == len(self.times) == len(self.cameras) == len(self.widths)
                == len(self.heights) == len(self.previews) == self.detections.num_groups == f):
            raise ValueError("frame columns differ in length")

    def keys(self) -> list[tuple[str, int]]:
        return list(zip(self.sources, (int(i) for i in self.frames)))

    def entry(self, file: str) -> SegmentEntry:
        return SegmentEntry(file, len(self.sources), len(self.detections.scores),
                            (self.sources[0], int(self.frames[0])))


# Embeddings are stored as float16 (half the disk of float32; cosine error in BENCHMARKS.md
# "Footage at scale"); readers take the dtype from the dataset, so float32 segments still read.
STORED_EMBEDDING_DTYPE = np.float16


def write_segment(path: Path, block: FrameBlock, header: RunHeader) -> None:
    """One segment file, written beside ``path`` and moved there when whole."""
    det = block.detections
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["schema"], f.attrs["schema_version"] = SCHEMA, SCHEMA_VERSION
        f.attrs["model_fingerprint"] = header.model.fingerprint
        g = f.create_group("frames")
        g.create_dataset("source", data=text_column(block.sources), dtype=TEXT)
        g.create_dataset("index", data=np.asarray(block.frames, np.int64))
        g.create_dataset("time", data=np.asarray(block.times, np.float64))
        g.create_dataset("camera", data=text_column(block.cameras), dtype=TEXT)
        g.create_dataset("width", data=np.asarray(block.widths, np.int32))
        g.create_dataset("height", data=np.asarray(block.heights, np.int32))
        g.create_dataset("offsets", data=np.asarray(det.offsets, np.int64))
        previews = g.create_dataset("preview", (len(block.previews),), dtype=JPEG)
        for i, jpeg in enumerate(block.previews):
            previews[i] = np.frombuffer(jpeg, np.uint8)
        d = f.create_group("detections")
        d.create_dataset("boxes", data=np.asarray(det.boxes, np.float32).reshape(-1, 4))
        d.create_dataset("scores", data=np.asarray(det.scores, np.float32).ravel())
        d.create_dataset("embeddings", data=l2_normalize(det.embeddings.reshape(-1, det.dim))
                         .astype(STORED_EMBEDDING_DTYPE))


def segment_keys(path: Path) -> list[tuple[str, int]]:
    with reading_segment(path.parent.parent, path), h5py.File(path, "r") as f:
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


def check_existing(directory: Path, header: RunHeader) -> None:
    """The committed gallery and any unfinished run must use this model and settings."""
    manifest = read_manifest(directory)
    if manifest is not None:
        manifest.header.check_compatible(directory, header)
    for path in pending_files(directory):
        read_pending(path).header.check_compatible(directory, header)


class GalleryWriter:
    """Adds segments for one process (``rank``) of an index run; :func:`commit` ends the run.

    Opening checks the model and settings against the manifest (or the pending segments of
    an unfinished first run) and takes this rank's lock."""

    def __init__(self, directory, header: RunHeader, *, rank: int = 0):
        self.directory, self.header, self.rank = Path(directory), header, int(rank)
        for sub in (SEGMENTS, PENDING):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        self._lock = _Lock(self.directory, f"{LOCK}.rank-{self.rank}")
        try:
            check_existing(self.directory, header)
        except BaseException:
            self._lock.release()
            raise
        self.pending_path = self.directory / PENDING / f"rank-{self.rank}.json"
        self.pending = read_pending(self.pending_path) if self.pending_path.is_file() else \
            PendingList(header)

    def done(self) -> set[tuple[str, int]]:
        """(source, frame) of every frame in a committed or pending segment (all ranks)."""
        names = committed_segment_names(self.directory)
        for path in pending_files(self.directory):
            names |= {s.file for s in read_pending(path).segments}
        keys: set[tuple[str, int]] = set()
        for name in sorted(names):
            keys.update(segment_keys(self.directory / SEGMENTS / name))
        return keys

    def add(self, block: FrameBlock) -> str:
        """Write ``block`` as a segment and list it in this rank's pending file."""
        if len(block.sources) == 0:
            return ""
        if block.detections.dim != self.header.embedding_dim:
            raise GalleryError(f"embeddings are {block.detections.dim}-d, the gallery's are "
                               f"{self.header.embedding_dim}-d")
        name = f"seg-r{self.rank}-{uuid.uuid4().hex[:16]}.h5"
        write_segment(self.directory / SEGMENTS / name, block, self.header)
        self.pending.segments.append(block.entry(name))
        write_json_atomic(self.pending_path, self.pending.to_dict())
        return name

    def close(self) -> None:
        self._lock.release()


def committed_segment_names(directory: Path) -> set[str]:
    m = read_manifest(directory)
    return {s.file for s in m.segments} if m else set()


def commit(directory, header: RunHeader, *, index_kind: str | None = None,
           tracks: TrackMaker | None = None,
           rebuild_without: frozenset[str] | None = None,
           training: Training | None = None,
           shards: tuple[tuple[Path, Manifest], ...] = ()) -> Manifest:
    """End an index run: move every pending segment into the manifest (sorted by their first
    frame, so an interrupted and an uninterrupted run commit the same order), bring the FAISS
    index and, with a ``tracks`` maker, the tracks up to date, replace the manifest, then tidy
    up. ``index_kind`` None keeps the gallery's kind (flat for a new gallery).
    ``rebuild_without`` (`gallery repair`): build the index afresh, leaving out these committed
    segment files. ``training``: an ``ivfpq`` index's shared training (``index
    --ivfpq-trained``); with ``shards`` (the galleries a merge takes the segments of, all
    encoded against ``training``) their code files are merged instead of encoding any row.
    Returns the new manifest."""
    directory = Path(directory)
    if index_kind is not None and index_kind not in INDEX_KINDS:
        raise GalleryError(f"index kind must be one of {INDEX_KINDS}, got {index_kind!r}")
    lock = _Lock(directory, LOCK)
    try:
        old = read_manifest(directory)
        if old is not None:
            old.header.check_compatible(directory, header)
        kind = index_kind or (old.index.kind if old else DEFAULT_INDEX_KIND)
        drop = rebuild_without or frozenset()
        segments = [s for s in old.segments if s.file not in drop] if old else []
        known = {s.file for s in segments}
        new = sorted((s for p in pending_files(directory) for s in read_pending(p).segments
                      if s.file not in known), key=lambda s: s.first)
        segments += new
        if shards:
            index = merge_ivfpq_shards(directory, segments, list(shards), training,
                                       old.index.generation + 1 if old else 1)
        else:
            index = _update_index(directory, old.index if old else None, segments, kind,
                                  fresh=rebuild_without is not None, training=training)
        manifest = Manifest(header, tuple(segments), index, old.created if old else now(), now())
        kept = None if rebuild_without is not None else old   # a repair links every track afresh
        manifest = replace(manifest, tracks=_update_tracks(directory, manifest, kept, tracks))
        write_json_atomic(directory / MANIFEST, manifest.to_dict())
        _tidy(directory, manifest)
        return manifest
    finally:
        lock.release()


def _update_index(directory: Path, entry: IndexEntry | None, segments: list[SegmentEntry],
                  kind: str, *, fresh: bool = False,
                  training: Training | None = None) -> IndexEntry:
    """The index entry for ``segments``: the old file when nothing changed (an ivfpq index
    made before re-scoring files gets one), else the old index plus the new rows (every kind:
    IVF lists and ivfpq codes are trained once), or a fresh build when the kind changes or
    ``fresh`` asks for one."""
    total = sum(s.detections for s in segments)
    if training is not None and kind != "ivfpq":
        raise GalleryError(f"gallery {directory}: a shared ivfpq training (--ivfpq-trained) "
                           f"needs the ivfpq index, not {kind}")
    if entry and entry.kind == kind and entry.detections == total and not fresh:
        if kind == "ivfpq" and RESCORE not in entry.params:    # made before the file was
            return replace(entry, params={**entry.params, RESCORE: update_rescore(
                directory, None, segments, entry.generation)})
        return entry
    generation = entry.generation + 1 if entry else 1
    if kind == "ivfpq":
        if total == 0:
            raise GalleryError(f"gallery {directory} holds no detections to train an ivfpq "
                               "index on: index footage with people first")
        return update_ivfpq(directory, entry, segments, generation, fresh=fresh,
                            training=training)
    name = f"index-{generation}.faiss"
    # an empty index is built again (made without any embedding, its dimension is a guess)
    if entry and entry.kind == kind and not fresh and entry.detections and \
            (directory / entry.file).is_file():
        with reading_index(directory, directory / entry.file):
            index = read_index(directory / entry.file)
        extend_index(index, _embeddings_from(directory, segments, entry.detections))
    else:
        index = build_index(_embeddings_from(directory, segments, 0), kind)
    write_index(index, directory / name)
    return IndexEntry(name, kind, kind != "flat", total, generation)


def _update_tracks(directory: Path, manifest: Manifest, old: Manifest | None,
                   maker: TrackMaker | None) -> TracksEntry | None:
    """The tracks entry for ``manifest``: the old one while it covers every detection and its
    files are there (its index rebuilt when the kind changed), else a table from ``maker`` that links only the
    groups with new frames; None without a maker (no tracks until a commit with one)."""
    entry = old.tracks if old else None
    kind = manifest.index.kind
    if entry and entry.detections == manifest.detections and all(
            (directory / name).is_file() for name in track_files(entry)):
        if entry.kind == track_index_kind(kind):
            return entry
        table = read_track_table(directory, entry)      # the same tracks, another index kind
    elif maker is None:
        return None
    else:
        table = maker(read_gallery(directory, manifest), *_previous_tracks(directory, old))
    return write_track_table(directory, table, kind, entry.generation + 1 if entry else 1)


def _previous_tracks(directory: Path, old: Manifest | None):
    """(the last commit's track table, its frame count), or (None, 0) when there is none to
    build on (a gallery made before tracks were stored, or a tracks file lost)."""
    if old is None or old.tracks is None:
        return None, 0
    try:
        return read_track_table(directory, old.tracks), old.frames
    except (GalleryError, OSError):
        return None, 0


def _embeddings_from(directory: Path, segments: list[SegmentEntry], start: int) -> np.ndarray:
    """Embeddings of detection rows start: in manifest order."""
    parts, row = [], 0
    dim = None
    for s in segments:
        path = directory / SEGMENTS / s.file
        with reading_segment(directory, path), h5py.File(path, "r") as f:
            emb = f["detections/embeddings"]
            dim = emb.shape[1]
            if row + s.detections > start:
                parts.append(emb[max(0, start - row):])
        row += s.detections
    if not parts:
        return np.zeros((0, dim or 1), np.float32)
    return l2_normalize(np.concatenate(parts).astype(np.float32))   # float16 on disk: see read_rows


def _tidy(directory: Path, manifest: Manifest) -> None:
    """After a commit: drop pending lists, segments no manifest lists (a run killed between
    writing a segment and listing it), old index files and temporaries."""
    for p in pending_files(directory):
        p.unlink()
    keep = {s.file for s in manifest.segments}
    for p in (directory / SEGMENTS).iterdir():
        if p.name not in keep:
            p.unlink()
    for p in directory.glob("index-*.faiss"):
        if p.name != manifest.index.file:
            p.unlink()
    for p in directory.glob("tracks-*"):
        if p.name not in track_files(manifest.tracks):
            p.unlink()
    needed = ivfpq_files(manifest.index)
    for p in (directory / ONDISK).glob("*"):
        if p.name not in needed:
            p.unlink()
    for folder in (directory, directory / SEGMENTS, directory / PENDING):
        for p in folder.glob(TEMP_GLOB):
            p.unlink()


def merge_galleries(out, inputs, *, index_kind: str | None = None,
                    tracks: TrackMaker | None = None, retrain: bool = False) -> Manifest:
    """A new gallery at ``out`` holding every segment of the galleries ``inputs`` (made by the
    same model and settings, holding different frames: e.g. ``index --shard-of K/N`` parts),
    committed into one index (``index_kind`` None: the first input's kind) and, with a
    ``tracks`` maker, linked into tracks. Segments are hard-linked when on the same file
    system, else copied. ``ivfpq`` inputs must share one training (``index --ivfpq-trained``):
    their codes are merged on disk, nothing encoded again; ``retrain`` trains and encodes the
    merged gallery afresh instead."""
    out, inputs = Path(out), [Path(p) for p in inputs]
    if read_manifest(out) is not None or pending_files(out):
        raise GalleryError(f"{out} already holds a gallery (or an unfinished run or merge): "
                           "merge into a new folder")
    manifests = [_input_manifest(p) for p in inputs]
    for path, m in zip(inputs[1:], manifests[1:]):
        try:
            manifests[0].header.check_compatible(inputs[0], m.header)
        except GalleryError as e:
            raise type(e)(f"cannot merge {path} with {inputs[0]}: {e}") from None
    _check_disjoint(inputs, manifests)
    kind = index_kind or manifests[0].index.kind
    shards = tuple(zip(inputs, manifests))
    on_disk = kind == "ivfpq" and not retrain and any(m.index.kind == kind for m in manifests)
    training = _one_training(shards) if on_disk else None
    header = manifests[0].header
    writer = GalleryWriter(out, header)
    try:
        for path, m in shards:
            for s in m.segments:
                link_or_copy(path / SEGMENTS / s.file, out / SEGMENTS / s.file)
                writer.pending.segments.append(s)
        write_json_atomic(writer.pending_path, writer.pending.to_dict())
    finally:
        writer.close()
    return commit(out, header, index_kind=kind, tracks=tracks, training=training,
                  shards=shards if on_disk else ())


def _one_training(shards: tuple[tuple[Path, Manifest], ...]) -> Training:
    """The training every ivfpq input was encoded against; GalleryError naming two inputs
    that differ (merging them would encode every detection again)."""
    try:
        trainings = [gallery_training(path, m) for path, m in shards]
    except GalleryError as e:
        raise GalleryError(f"cannot merge on disk: {e}; merge with --retrain to train and "
                           "encode the merged gallery afresh") from None
    first = trainings[0]
    for (path, _), other in zip(shards[1:], trainings[1:]):
        if other.fingerprint != first.fingerprint:
            raise GalleryError(
                f"cannot merge {path} with {first.gallery} without encoding every detection "
                f"again: their ivfpq indexes were trained apart (sha256 "
                f"{other.fingerprint[:12]} vs {first.fingerprint[:12]}); index the shards with "
                f"`index --ivfpq-trained {first.gallery}`, or merge with --retrain")
    return first


def _input_manifest(path: Path) -> Manifest:
    m = read_manifest(path) if path.is_dir() else None
    if m is None:
        raise GalleryError(f"{path} is not a gallery: no {MANIFEST}")
    return m


def _check_disjoint(inputs: list[Path], manifests: list[Manifest]) -> None:
    """No frame (source, frame index) and no segment file may be in two inputs."""
    seen: dict[tuple[str, int], Path] = {}
    files: set[str] = set()
    for path, m in zip(inputs, manifests):
        for s in m.segments:
            if s.file in files:
                raise GalleryError(f"segment {s.file} of {path} is in another input too")
            files.add(s.file)
            for key in segment_keys(path / SEGMENTS / s.file):
                if key in seen:
                    raise GalleryError(f"frame {key[1]} of {key[0]} is in both {seen[key]} and "
                                       f"{path}: merge galleries of different footage")
                seen[key] = path
