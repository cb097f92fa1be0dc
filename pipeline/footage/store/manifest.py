"""The gallery manifest: what a gallery folder holds, as typed entries, and the checks every
reader and writer makes against it.

Layout of a gallery folder (schema ``person-search-gallery``, version :data:`SCHEMA_VERSION`):

- ``gallery.json`` (the manifest, :class:`Manifest`): the model that made the embeddings
  (kind, name, sha256 fingerprint, run settings), embedding size and minimum detection score,
  the committed segments in order, and the FAISS index file with its kind. Readers see only
  what it lists.
- ``segments/*.h5``: immutable HDF5 files, one per committed chunk of frames::

    frames/source (F,) UTF-8 absolute path   frames/index (F,) int64 frame number (0: image)
    frames/time (F,) float64 s (NaN: image)  frames/camera (F,) UTF-8
    frames/width, frames/height (F,) int32   frames/offsets (F+1,) int64 detections of frame i
    frames/preview (F,) vlen uint8 JPEG      are rows offsets[i]:offsets[i+1]
    detections/boxes (T,4) float32 x1,y1,x2,y2 frame pixels
    detections/scores (T,) float32           detections/embeddings (T,D) float32, unit norm

- ``index-N.faiss``: the FAISS index over every embedding in manifest order
  (:mod:`pipeline.runtime.faiss_index`); for the ``ivfpq`` kind the folder ``ivfpq/`` instead
  (:mod:`.ondisk`): ``trained-N.faiss`` (trained once, or another gallery's training; the
  manifest's index ``params`` name it and record its sha256, the factory string and the
  training sample's size; ``trained.faiss`` in galleries made before), one ``codes-N.faiss``
  per commit (the codes of the rows it added; ``codes-N-K.faiss``: a merged shard's) and
  ``lists-N.faiss`` + ``lists-N.ivfdata``, every code merged into inverted lists on disk that
  a search maps read-only, and ``rescore-N.f16``, every embedding (float16, row order) for
  re-scoring, appended per commit (the index params' ``rescore``: file, rows, bytes; absent in
  galleries made before it, which re-score from the segments).
- ``tracks-N.h5`` + ``tracks-N.faiss`` (:mod:`.tracks_file`, the manifest's ``tracks``
  entry): each detection's track (one person's visit to one camera), a table of the tracks
  with one pooled embedding each, and a FAISS index over those embeddings.
- ``pending/rank-R.json``: the segments an unfinished run of process R has written.

Version 1 (before run settings were a typed entry: ``"size=750 proposals=100 bf16"``) is read
as it is and rewritten by the next ``index`` run. Versions 1 and 2 (before tracks were stored)
read as a gallery with no tracks; the next commit (``index``, ``gallery upgrade``) adds them.
"""
from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipeline.errors import UserError
from pipeline.runtime.types import ModelInfo

SCHEMA = "person-search-gallery"
SCHEMA_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
MANIFEST = "gallery.json"
SEGMENTS = "segments"
PENDING = "pending"
LOCK = ".lock"


class GalleryError(UserError, ValueError):
    """A gallery folder is missing, malformed, busy or used inconsistently. Names the folder."""


class MissingItemError(GalleryError):
    """A frame, detection or camera the gallery does not hold."""


class ModelMismatchError(GalleryError):
    """The gallery's embeddings come from another model than the one at hand."""


@dataclass(frozen=True)
class SegmentEntry:
    """One committed (or pending) segment file and what it holds."""

    file: str
    frames: int
    detections: int
    first: tuple[str, int]        # (source, frame) of its first frame: the commit order

    def to_dict(self) -> dict:
        return {"file": self.file, "frames": self.frames, "detections": self.detections,
                "first": list(self.first)}

    @classmethod
    def from_dict(cls, d: dict) -> "SegmentEntry":
        return cls(str(d["file"]), int(d["frames"]), int(d["detections"]),
                   (str(d["first"][0]), int(d["first"][1])))


LEGACY_IVFPQ_TRAINED = "trained.faiss"   # the one trained file of older ivfpq galleries


@dataclass(frozen=True)
class IndexEntry:
    """The FAISS index file over every committed embedding."""

    file: str
    kind: str
    approximate: bool
    detections: int
    generation: int
    params: dict = field(default_factory=dict)   # ivfpq: factory, trained_on, files, search

    def to_dict(self) -> dict:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, d: dict) -> "IndexEntry":
        params = dict(d.get("params", {}))
        if d["kind"] == "ivfpq":       # galleries made before trained files were named per training
            params.setdefault("trained", LEGACY_IVFPQ_TRAINED)
        return cls(str(d["file"]), str(d["kind"]), bool(d["approximate"]), int(d["detections"]),
                   int(d["generation"]), params)


@dataclass(frozen=True)
class TracksEntry:
    """The tracks file and the FAISS index over its pooled embeddings (:mod:`.tracks_file`)."""

    file: str
    index: str
    kind: str                     # the index's kind (flat for an ivfpq gallery's tracks)
    tracks: int
    detections: int               # the detections it covers: the whole gallery
    generation: int
    pooling: str

    def to_dict(self) -> dict:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, d: dict) -> "TracksEntry":
        return cls(str(d["file"]), str(d["index"]), str(d["kind"]), int(d["tracks"]),
                   int(d["detections"]), int(d["generation"]), str(d["pooling"]))


@dataclass(frozen=True)
class RunHeader:
    """What every writer of a gallery must agree on: the model and the detection settings.
    A pending list starts with it; so does the manifest."""

    model: ModelInfo
    embedding_dim: int
    min_score: float

    def to_dict(self) -> dict:
        return {"model": self.model.to_dict(), "embedding_dim": self.embedding_dim,
                "min_score": self.min_score}

    @classmethod
    def from_dict(cls, d: dict) -> "RunHeader":
        return cls(ModelInfo.from_dict(d["model"]), int(d["embedding_dim"]),
                   float(d["min_score"]))

    def check_compatible(self, directory: Path, other: "RunHeader") -> None:
        """ModelMismatchError / GalleryError naming both sides when ``other`` differs."""
        check_same_model(directory, self.model, other.model)
        if self.embedding_dim != other.embedding_dim:
            raise GalleryError(f"gallery {directory} holds {self.embedding_dim}-d embeddings, "
                               f"the model gives {other.embedding_dim}-d")
        if abs(self.min_score - other.min_score) > 1e-9:
            raise GalleryError(f"gallery {directory} keeps detections scoring >= "
                               f"{self.min_score}; this run asks for {other.min_score}: use the "
                               "same --min-score, or a new gallery folder")


@dataclass(frozen=True)
class Manifest:
    header: RunHeader
    segments: tuple[SegmentEntry, ...]
    index: IndexEntry
    created: str
    updated: str
    version: int = SCHEMA_VERSION
    tracks: TracksEntry | None = None    # None: made before tracks were stored (version < 3)

    @property
    def model(self) -> ModelInfo:
        return self.header.model

    @property
    def embedding_dim(self) -> int:
        return self.header.embedding_dim

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.segments)

    @property
    def detections(self) -> int:
        return sum(s.detections for s in self.segments)

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "version": SCHEMA_VERSION, **self.header.to_dict(),
                "segments": [s.to_dict() for s in self.segments], "frames": self.frames,
                "detections": self.detections, "index": self.index.to_dict(),
                "tracks": self.tracks.to_dict() if self.tracks else None,
                "created": self.created, "updated": self.updated}

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        return cls(RunHeader.from_dict(d), tuple(SegmentEntry.from_dict(s) for s in d["segments"]),
                   IndexEntry.from_dict(d["index"]), str(d["created"]), str(d["updated"]),
                   int(d["version"]),
                   TracksEntry.from_dict(d["tracks"]) if d.get("tracks") else None)

    def updated_with(self, **changes) -> "Manifest":
        return replace(self, updated=now(), **changes)


@dataclass
class PendingList:
    """The segments one process of an unfinished run has written."""

    header: RunHeader
    segments: list[SegmentEntry] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {**self.header.to_dict(), "segments": [s.to_dict() for s in self.segments]}

    @classmethod
    def from_dict(cls, d: dict) -> "PendingList":
        return cls(RunHeader.from_dict(d), [SegmentEntry.from_dict(s) for s in d["segments"]])


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise GalleryError(f"{path}: unreadable {what} ({e})") from None


def read_manifest(directory) -> Manifest | None:
    """The manifest of ``directory`` (checked), or None when it holds none yet."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    m = read_json(path, "gallery manifest")
    if not isinstance(m, dict) or m.get("schema") != SCHEMA:
        schema = m.get("schema") if isinstance(m, dict) else None
        raise GalleryError(f"{path}: schema {schema!r}, expected {SCHEMA!r}")
    if m.get("version") not in READABLE_VERSIONS:
        raise GalleryError(f"{path}: gallery schema version {m.get('version')}, this toolkit "
                           f"reads versions {READABLE_VERSIONS}; index the footage again into "
                           "a new gallery folder")
    try:
        return Manifest.from_dict(m)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise GalleryError(f"{path}: malformed gallery manifest ({type(e).__name__}: {e})") \
            from None


def pending_files(directory: Path) -> list[Path]:
    return sorted((Path(directory) / PENDING).glob("rank-*.json"))


def read_pending(path: Path) -> PendingList:
    try:
        return PendingList.from_dict(read_json(path, "pending list"))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        if isinstance(e, GalleryError):
            raise
        raise GalleryError(f"{path}: malformed pending list ({type(e).__name__}: {e})") from None


def check_same_model(directory: Path, stored: ModelInfo, model: ModelInfo) -> None:
    if not stored.same_embeddings(model):
        raise ModelMismatchError(
            f"gallery {directory} holds embeddings of {stored.describe()}, but this run uses "
            f"{model.describe()}: embeddings of different models (or of one run at other "
            f"settings) cannot be compared; use the gallery's model and settings, or index "
            f"into a new gallery folder")
