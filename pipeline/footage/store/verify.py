"""Checking a gallery folder file by file (`gallery verify`) and repairing it (`gallery repair`).

:func:`verify_gallery` reads everything the manifest names: each committed segment whole
(every dataset present, with the row counts of its manifest entry), each index file (it
reads with FAISS and holds one vector per detection; for the ``ivfpq`` kind the trained index,
the code blocks, the on-disk lists and the re-scoring file too: its size, and its rows equal to
the segments' embeddings in row order) and the tracks files (``tracks-N.h5`` read whole and
its index, their counts those of the manifest's tracks entry); then the segments an unfinished
``index`` run has listed as pending, the same way. It returns a :class:`VerifyReport`, one
:class:`Problem` per damaged file.

:func:`repair_gallery` then, under the lock an ``index`` run holds (so it refuses to run beside
one): moves each damaged segment into ``damaged/`` (never deleting it; a pending one is also
taken off its pending list), writes the list of the frames it held to
``damaged/reindex-*.json``, and commits the intact segments with an index and tracks built
afresh (:func:`.writer.commit`, so the manifest is replaced whole, last). Running ``index``
again on the same sources then embeds exactly the frames the gallery lost."""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np

from cache.hdf5 import read_text
from pipeline.files import write_json_atomic
from pipeline.runtime.faiss_index import read_index, read_ondisk

from .damage import (INDEX_FIX, READ_ERRORS, SEGMENT_FIX, TRACKS_FIX, DamagedGalleryError,
                     damaged, describe)
from .manifest import (MANIFEST, SEGMENTS, GalleryError, Manifest, SegmentEntry, pending_files,
                       read_manifest, read_pending)
from .ondisk import FOLDER as ONDISK
from .ondisk import lists_data_problem, rescore_problem
from .tracks_file import TrackMaker, read_track_index, read_track_table
from .writer import GalleryWriter, commit

DAMAGED = "damaged"           # where `gallery repair` moves damaged segments
FRAME_COLUMNS = ("source", "index", "time", "camera", "width", "height", "preview")
PENDING_WHAT = "pending segment of an unfinished index run"
MANIFEST_FIX = ("restore it from a backup, or index the footage again into a new gallery "
                "folder (segments cannot be listed without it)")


@dataclass(frozen=True)
class Problem:
    """One damaged file: which, what is wrong, and what `gallery repair` does about it."""

    file: Path
    what: str
    fix: str
    segment: SegmentEntry | None = None     # the manifest entry of a damaged segment

    def line(self, directory: Path) -> str:
        if self.fix == MANIFEST_FIX:
            return f"{self.file}: {self.what}; {self.fix}"
        return str(damaged(directory, self.file, self.what, self.fix))

    def to_dict(self) -> dict:
        return {"file": str(self.file), "problem": self.what, "fix": self.fix}


@dataclass(frozen=True)
class VerifyReport:
    directory: Path
    segments: int
    detections: int
    problems: tuple[Problem, ...]
    pending_segments: int = 0     # written by an unfinished `index` run, not yet committed
    pending_detections: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def repairable(self) -> bool:
        return all(p.fix != MANIFEST_FIX for p in self.problems)

    def lines(self) -> list[str]:
        return [p.line(self.directory) for p in self.problems]

    def pending_line(self) -> str | None:
        """What an unfinished run left (None: nothing): its segments are checked too."""
        if not self.pending_segments:
            return None
        return (f"{self.directory}: {self.pending_segments} segments ({self.pending_detections} "
                "people) of an unfinished index run are pending; run the same `index` command "
                "again to resume the run and commit them")

    def to_dict(self) -> dict:
        return {"gallery": str(self.directory), "ok": self.ok, "segments": self.segments,
                "detections": self.detections, "pending_segments": self.pending_segments,
                "pending_detections": self.pending_detections,
                "problems": [p.to_dict() for p in self.problems]}


def verify_gallery(directory) -> VerifyReport:
    """Every file the manifest of ``directory`` names and every pending segment, read and
    checked against them."""
    directory = Path(directory)
    try:
        m = read_manifest(directory) if directory.is_dir() else None
    except GalleryError as e:
        return VerifyReport(directory, 0, 0, (Problem(directory / MANIFEST, str(e).split(
            ": ", 1)[-1], MANIFEST_FIX),))
    if m is None:
        raise GalleryError(f"{directory} is not a gallery: no {MANIFEST}")
    pending = pending_segments(directory, m)
    problems = [*_segment_problems(directory, m.segments, m.embedding_dim, ""),
                *_segment_problems(directory, pending, m.embedding_dim, f"{PENDING_WHAT}: "),
                *(Problem(path, what, INDEX_FIX) for path, what in index_problems(directory, m)),
                *(Problem(path, what, TRACKS_FIX)
                  for path, what in tracks_problems(directory, m))]
    return VerifyReport(directory, len(m.segments), m.detections, tuple(problems),
                        len(pending), sum(s.detections for s in pending))


def pending_segments(directory: Path, m: Manifest) -> list[SegmentEntry]:
    """The segments an unfinished ``index`` run has written (every rank's pending list), less
    those the manifest already lists (a commit stopped before its tidy-up)."""
    committed = {s.file for s in m.segments}
    return [s for path in pending_files(directory) for s in read_pending(path).segments
            if s.file not in committed]


def _segment_problems(directory: Path, segments, dim: int, prefix: str) -> list[Problem]:
    return [Problem(directory / SEGMENTS / s.file, prefix + what, SEGMENT_FIX, s)
            for s in segments
            if (what := segment_problem(directory / SEGMENTS / s.file, s, dim))]


def _expected_shapes(entry: SegmentEntry, dim: int) -> dict[str, tuple]:
    f, t = entry.frames, entry.detections
    return {**{f"frames/{k}": (f,) for k in FRAME_COLUMNS}, "frames/offsets": (f + 1,),
            "detections/boxes": (t, 4), "detections/scores": (t,),
            "detections/embeddings": (t, dim)}


def segment_problem(path: Path, entry: SegmentEntry, dim: int) -> str | None:
    """What is wrong with segment ``path`` (read whole) against its manifest entry, or None."""
    if not path.is_file():
        return "segment missing"
    try:
        with h5py.File(path, "r") as f:
            for name, shape in _expected_shapes(entry, dim).items():
                if name not in f:
                    return f"segment lacks its dataset {name}"
                data = f[name][()]
                if data.shape != shape:
                    return (f"segment's {name} has shape {data.shape}, the manifest entry "
                            f"says {shape}")
            offsets = f["frames/offsets"][()]
    except READ_ERRORS as e:
        return f"damaged segment ({describe(e)})"
    if offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] != entry.detections:
        return "segment's frames/offsets do not count its detections"
    return None


def _read_problem(path: Path, reader, expected: int | None) -> str | None:
    """Whether FAISS file ``path`` reads (and holds ``expected`` vectors when given)."""
    if not path.is_file():
        return "index file missing"
    try:
        index = reader(path)
    except READ_ERRORS as e:
        return f"damaged index file ({describe(e)})"
    if expected is not None and index.ntotal != expected:
        return f"holds {index.ntotal} vectors, the gallery {expected}"
    return lists_data_problem(path, index) if reader is read_ondisk else None


def tracks_problems(directory: Path, m: Manifest) -> list[tuple[Path, str]]:
    """(file, problem) of each damaged tracks file the manifest names: ``tracks-N.h5`` read
    whole and its index, each checked against the manifest's tracks entry."""
    entry = m.tracks
    if entry is None:
        return []
    if entry.detections != m.detections:
        return [(directory / entry.file, f"the manifest's tracks cover {entry.detections} "
                 f"detections, its segments hold {m.detections}")]
    problems = []
    for read in (read_track_table, read_track_index):
        try:
            read(directory, entry)
        except DamagedGalleryError as e:
            problems.append((e.path, e.problem))
    return problems


def index_problems(directory: Path, m: Manifest) -> list[tuple[Path, str]]:
    """(file, problem) of each damaged index file the manifest names."""
    entry, total = m.index, m.detections
    if entry.detections != total:
        return [(directory / entry.file, f"the manifest's index covers {entry.detections} "
                 f"detections, its segments hold {total}")]
    if entry.kind != "ivfpq":
        checks = [(directory / entry.file, read_index, total)]
    else:
        folder = directory / ONDISK
        checks = [(folder / entry.params["trained"], read_index, 0),
                  *((folder / b, read_index, None) for b in entry.params["blocks"]),
                  (directory / entry.file, read_ondisk, total)]
    problems = [(path, what) for path, reader, expected in checks
                if (what := _read_problem(path, reader, expected))]
    rescore = rescore_problem(directory, m)
    return problems + ([rescore] if rescore else [])


@dataclass(frozen=True)
class DroppedSegment:
    """A damaged segment `gallery repair` left out, and the frames it held (None: unreadable,
    only its manifest entry is known)."""

    entry: SegmentEntry
    moved_to: Path | None
    frames: list[dict] | None

    def to_dict(self) -> dict:
        return {**self.entry.to_dict(), "moved_to": str(self.moved_to) if self.moved_to else None,
                "frame_list": self.frames}

    def describe(self) -> str:
        where = f"moved to {self.moved_to}" if self.moved_to else "file missing"
        if self.frames is None:
            return (f"dropped {self.entry.file} ({where}, unreadable): {self.entry.frames} "
                    f"frames from frame {self.entry.first[1]} of {self.entry.first[0]} on")
        by_source: dict[str, list[int]] = {}
        for f in self.frames:
            by_source.setdefault(f["source"], []).append(f["frame"])
        held = "; ".join(f"{src} frames {', '.join(map(str, fr))}"
                         for src, fr in by_source.items())
        return f"dropped {self.entry.file} ({where}): {held}"


@dataclass(frozen=True)
class RepairReport:
    directory: Path
    manifest: Manifest | None     # after the repair; None: nothing needed one
    dropped: tuple[DroppedSegment, ...]
    record: Path | None           # the JSON list of the frames to re-index


def _frames_held(path: Path) -> list[dict] | None:
    """(source, frame, time) of each frame a damaged segment still shows, or None."""
    try:
        with h5py.File(path, "r") as f:
            sources = read_text(f["frames/source"][()])
            frames, times = f["frames/index"][()].tolist(), f["frames/time"][()].tolist()
    except READ_ERRORS:
        return None
    return [{"source": s, "frame": int(i), "time": None if t != t else float(t)}
            for s, i, t in zip(sources, frames, times)]


def _set_aside(directory: Path, entry: SegmentEntry) -> DroppedSegment:
    """Move a damaged segment into ``damaged/`` (a name already there is kept: a suffix)."""
    path = directory / SEGMENTS / entry.file
    if not path.is_file():
        _unlist_pending(directory, entry.file)
        return DroppedSegment(entry, None, None)
    frames = _frames_held(path)
    (directory / DAMAGED).mkdir(exist_ok=True)
    target, n = directory / DAMAGED / entry.file, 1
    while target.exists():
        target, n = directory / DAMAGED / f"{entry.file}.{n}", n + 1
    os.replace(path, target)
    _unlist_pending(directory, entry.file)
    return DroppedSegment(entry, target, frames)


def _unlist_pending(directory: Path, name: str) -> None:
    """Take segment ``name`` off the pending list of an unfinished run that holds it (after
    the file is set aside: a repair killed in between finds a missing pending segment), so
    that the repair's commit leaves it out and an `index` re-run embeds its frames again."""
    for path in pending_files(directory):
        pending = read_pending(path)
        kept = [s for s in pending.segments if s.file != name]
        if len(kept) < len(pending.segments):
            write_json_atomic(path, replace(pending, segments=kept).to_dict())


def repair_gallery(directory, tracks: TrackMaker | None = None) -> RepairReport:
    """Set damaged segments aside and rebuild the index (and, with a ``tracks`` maker, the
    tracks) from the intact ones (nothing to do when verify finds nothing). GalleryError when the manifest itself is damaged or an
    ``index`` run holds the gallery."""
    directory = Path(directory)
    report = verify_gallery(directory)
    if not report.repairable:
        raise GalleryError(f"{report.lines()[0]}: `gallery repair` needs the manifest")
    if report.ok:
        return RepairReport(directory, None, (), None)
    header = read_manifest(directory).header
    writer = GalleryWriter(directory, header)     # the lock of an index run's first rank
    try:
        dropped = tuple(_set_aside(directory, p.segment) for p in report.problems
                        if p.segment is not None)
        record = _write_record(directory, dropped) if dropped else None
        manifest = commit(directory, header, tracks=tracks,
                          rebuild_without=frozenset(d.entry.file for d in dropped))
    finally:
        writer.close()
    return RepairReport(directory, manifest, dropped, record)


def _write_record(directory: Path, dropped: tuple[DroppedSegment, ...]) -> Path:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    return write_json_atomic(directory / DAMAGED / f"reindex-{stamp}.json", {
        "gallery": str(directory), "segments": [d.to_dict() for d in dropped],
        "how": "run the same `index` command on the same sources again: it embeds only the "
               "frames the gallery lacks"})
