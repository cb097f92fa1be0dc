"""The gallery's tracks: each detection's track and one row per track, in one file per commit.

``tracks-N.h5`` (written beside its name and moved there whole, like a segment)::

    detections/track (T,) int64 each detection's track (0..A-1), -1: in no track
    tracks/camera (A,) UTF-8       tracks/source (A,) UTF-8 its best detection's source
    tracks/start, tracks/end (A,) float64 seconds (NaN: still images)
    tracks/frames (A,) int64 its detections (one per frame)
    tracks/best (A,) int64 its best detection's id
    tracks/embeddings (A, D) float32 the pooled embedding, unit norm

and ``tracks-N.faiss``, a FAISS index over the pooled embeddings (row = track id) of the
gallery's own kind, except that an ``ivfpq`` gallery's tracks get a ``flat`` one: a track
pools tens of detections, so even a gallery too large for RAM has tracks that fit, and an exact
index needs no training. Both are rebuilt at each commit that adds detections (a commit renumbers
the tracks of the groups it touched) and named by the manifest's ``tracks`` entry.

What makes a table is not the store's business (it must stay free of trackers and models): a
commit is handed a :data:`TrackMaker`, :func:`pipeline.footage.track_store.make_track_table`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from cache.hdf5 import TEXT, read_text, text_column
from pipeline.runtime.faiss_index import build_index, read_index, write_index
from pipeline.files import atomic_path

from .damage import TRACKS_FIX, damaged, reading_tracks
from .manifest import SCHEMA, SCHEMA_VERSION, TracksEntry


@dataclass
class TrackTable:
    """``track_of`` (T,) each detection's track (-1: none); per track (A rows) the columns of
    the module docstring."""

    track_of: np.ndarray
    camera: list[str]
    source: list[str]
    start: np.ndarray
    end: np.ndarray
    frames: np.ndarray
    best: np.ndarray
    embeddings: np.ndarray
    pooling: str

    def __len__(self) -> int:
        return len(self.best)


#: (gallery of the new manifest, the previous commit's table or None, its frame count) -> table
TrackMaker = Callable[[object, "TrackTable | None", int], TrackTable]


def track_index_kind(kind: str) -> str:
    return "flat" if kind == "ivfpq" else kind


def write_track_table(directory: Path, table: TrackTable, kind: str,
                      generation: int) -> TracksEntry:
    """``tracks-{generation}.h5`` and its index, each moved into place whole."""
    directory = Path(directory)
    name, index_name = f"tracks-{generation}.h5", f"tracks-{generation}.faiss"
    with atomic_path(directory / name) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["schema"], f.attrs["schema_version"] = SCHEMA, SCHEMA_VERSION
        f.attrs["pooling"] = table.pooling
        f.create_dataset("detections/track", data=np.asarray(table.track_of, np.int64))
        g = f.create_group("tracks")
        for column in ("camera", "source"):
            g.create_dataset(column, data=text_column(getattr(table, column)), dtype=TEXT)
        g.create_dataset("start", data=np.asarray(table.start, np.float64))
        g.create_dataset("end", data=np.asarray(table.end, np.float64))
        g.create_dataset("frames", data=np.asarray(table.frames, np.int64))
        g.create_dataset("best", data=np.asarray(table.best, np.int64))
        g.create_dataset("embeddings", data=np.asarray(table.embeddings, np.float32))
    index_kind = track_index_kind(kind)
    write_index(build_index(table.embeddings, index_kind), directory / index_name)
    return TracksEntry(name, index_name, index_kind, len(table), len(table.track_of),
                       generation, table.pooling)


def read_track_table(directory: Path, entry: TracksEntry) -> TrackTable:
    """The table of ``tracks-N.h5``, read whole and checked against ``entry``
    (:class:`.damage.DamagedGalleryError` naming the file and `gallery repair` when it is
    missing, unreadable or disagrees)."""
    path = Path(directory) / entry.file
    with reading_tracks(directory, path), h5py.File(path, "r") as f:
        g = f["tracks"]
        table = TrackTable(f["detections/track"][()], read_text(g["camera"][()]),
                           read_text(g["source"][()]), g["start"][()], g["end"][()],
                           g["frames"][()], g["best"][()],
                           np.asarray(g["embeddings"][()], np.float32), str(f.attrs["pooling"]))
    if (what := _table_problem(table, entry)):
        raise damaged(directory, path, what, TRACKS_FIX)
    return table


def _table_problem(table: TrackTable, entry: TracksEntry) -> str | None:
    """What disagrees in ``table`` (its counts, against ``entry`` and between its columns)."""
    if len(table.track_of) != entry.detections or len(table) != entry.tracks:
        return (f"holds {len(table)} tracks of {len(table.track_of)} detections, the manifest "
                f"says {entry.tracks} of {entry.detections}")
    rows = {len(table.camera), len(table.source), len(table.start), len(table.end),
            len(table.frames), len(table.embeddings)}
    if rows != {entry.tracks} or table.embeddings.ndim != 2:
        return f"its per-track columns do not all hold {entry.tracks} rows"
    if len(table.track_of) and not (-1 <= table.track_of.min() and
                                    table.track_of.max() < entry.tracks):
        return f"names tracks outside 0..{entry.tracks - 1}"
    return None


def read_track_index(directory: Path, entry: TracksEntry):
    path = Path(directory) / entry.index
    with reading_tracks(directory, path):
        index = read_index(path)
    if index.ntotal != entry.tracks:
        raise damaged(directory, path, f"holds {index.ntotal} vectors, the gallery "
                      f"{entry.tracks} tracks", TRACKS_FIX)
    return index


def track_files(entry: TracksEntry | None) -> set[str]:
    """The gallery's files that ``entry`` names (the tidy-up keeps these)."""
    return set() if entry is None else {entry.file, entry.index}
