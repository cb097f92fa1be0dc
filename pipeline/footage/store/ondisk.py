"""The ``ivfpq`` index of a gallery: trained once, codes added per commit, lists on disk.

Folder ``ivfpq/`` of the gallery: ``trained-N.faiss`` (the empty index trained at commit N,
the first ``ivfpq`` one, on a sample of the embeddings,
:func:`pipeline.runtime.faiss_index.ivfpq_factory`, or another gallery's training linked in:
``index --ivfpq-trained``; galleries made before these names read ``trained.faiss``, the
manifest's index params name the file and record its sha256, :data:`FINGERPRINT`),
``codes-N.faiss`` (the codes of the rows commit N added; immutable, like segments) and
``lists-N.faiss`` + ``lists-N.ivfdata`` (every code file merged with
``faiss.contrib.ondisk.merge_ondisk`` into inverted lists on disk). A commit encodes only its
new rows and merges the code files again (a copy of 40 bytes per detection, not a retraining);
the manifest names the new files last, so a run killed at any point leaves the last complete
index, and the next commit's tidy-up drops what no manifest names. Galleries that share one
training merge without encoding (:func:`merge_ivfpq_shards`): their code files are copied with
the ids renumbered (``codes-N-K.faiss``) and merged on disk.

``rescore-N.f16`` (the manifest's index params ``rescore``: file, rows, bytes): every
detection's embedding in gallery row order, float16 rows as the segments store them, so a
query reads only the few hundred rows it re-scores from one file (not a few rows of each
of a hundred segment files). A commit appends its new rows in place (no rewrite); the manifest
records the rows and bytes, so bytes past them (a commit killed mid-append) are ignored and
cut off by the next commit. A fresh index (a repair, a merge, a gallery made before the file)
writes a new one whole. Galleries without it read their rows from the segments.
"""
from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from pipeline.arrays import l2_normalize
from pipeline.files import atomic_path, link_or_copy
from pipeline.runtime.faiss_index import (IVFPQ_MAX_LISTS, IVFPQ_TRAIN_PER_LIST, RESCORE_FACTOR,
                                          encode_block, ivfpq_factory, merge_blocks,
                                          ondisk_data_bytes, read_index, renumber_block,
                                          train_ivfpq, write_index)

from .damage import INDEX_FIX, DamagedGalleryError, damaged, reading_segment
from .manifest import (MANIFEST, SEGMENTS, GalleryError, IndexEntry, Manifest, RunHeader,
                       SegmentEntry, read_manifest)

FOLDER = "ivfpq"
FINGERPRINT = "trained_sha256"    # the index params' record of which training it is
TRAINING_KEYS = ("factory", "trained_on", "nprobe", "rescore_factor", FINGERPRINT)
TRAIN_SEED = 0
OPEN_SEGMENTS = 512               # segment files kept open for re-scoring
RESCORE = "rescore"               # the index params' record of the re-scoring file
# the segments' own dtype (writer.STORED_EMBEDDING_DTYPE): the file holds the very same values
RESCORE_DTYPE = np.dtype(np.float16)


@dataclass(frozen=True)
class Training:
    """A trained empty ivfpq index: its file, the gallery it belongs to (named in messages)
    and what a manifest's index params record of it (:data:`TRAINING_KEYS`)."""

    gallery: Path
    path: Path
    params: dict

    @property
    def fingerprint(self) -> str:
        return self.params[FINGERPRINT]


def training_of(directory: Path, entry: IndexEntry | None) -> Training | None:
    """The training of ``entry``, the index of the gallery at ``directory``, while its file
    reads and matches the recorded sha256; None when ``entry`` is no ivfpq index or its
    trained file is missing or damaged (a new training is needed)."""
    if entry is None or entry.kind != "ivfpq":
        return None
    path = Path(directory) / FOLDER / entry.params["trained"]
    try:
        read_index(path)
    except (OSError, RuntimeError):   # missing, or not a FAISS file
        return None
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    if entry.params.get(FINGERPRINT, sha) != sha:
        return None
    params = {**{k: entry.params[k] for k in TRAINING_KEYS[:-1]}, FINGERPRINT: sha}
    return Training(Path(directory), path, params)


def gallery_training(directory, manifest: Manifest | None = None) -> Training:
    """The training of the ivfpq gallery at ``directory`` (``index --ivfpq-trained``, a
    merge); GalleryError naming the gallery when it has none that reads."""
    m = manifest or read_manifest(directory)
    if m is None:
        raise GalleryError(f"{directory} is not a gallery: no {MANIFEST}")
    if m.index.kind != "ivfpq":
        raise GalleryError(f"gallery {directory} has a {m.index.kind} index, not an ivfpq one: "
                           "its training cannot be shared")
    training = training_of(directory, m.index)
    if training is None:
        raise GalleryError(f"gallery {directory}: its trained ivfpq file "
                           f"{FOLDER}/{m.index.params['trained']} is missing or damaged; "
                           f"run `gallery verify {directory}`")
    return training


def shared_training(directory, shared, header: RunHeader) -> Training:
    """The training of the ivfpq gallery ``shared`` for a run of ``header`` into the gallery
    at ``directory`` (``index --ivfpq-trained``); GalleryError naming both when ``shared``
    holds another model's embeddings or ``directory`` already has another training."""
    shared = Path(shared)
    m = read_manifest(shared) if shared.is_dir() else None
    training = gallery_training(shared, m)
    m.header.check_compatible(shared, header)
    existing = read_manifest(directory) if Path(directory).is_dir() else None
    check_same_training(Path(directory), training_of(directory, existing and existing.index),
                        training)
    return training


def check_same_training(directory: Path, kept: Training | None, wanted: Training | None) -> None:
    """GalleryError naming both galleries when ``kept`` and ``wanted`` are other trainings."""
    if kept is not None and wanted is not None and kept.fingerprint != wanted.fingerprint:
        raise GalleryError(
            f"gallery {directory}'s ivfpq index was trained apart from {wanted.gallery}'s "
            f"(sha256 {kept.fingerprint[:12]} vs {wanted.fingerprint[:12]}): a gallery keeps "
            f"its training; index into a new folder with --ivfpq-trained {wanted.gallery}")


def update_ivfpq(directory: Path, entry: IndexEntry | None, segments: list[SegmentEntry],
                 generation: int, *, fresh: bool = False,
                 training: Training | None = None) -> IndexEntry:
    """The ivfpq entry after adding the rows beyond ``entry`` (all rows when ``fresh`` or when
    ``entry`` is no ivfpq index). The codes are encoded against the gallery's own training
    while it is intact, else against ``training`` (another gallery's, shared), else against
    one trained now on a sample, into ``trained-N.faiss``: a run killed meanwhile leaves the
    file the last manifest names as it was."""
    folder = Path(directory) / FOLDER
    folder.mkdir(exist_ok=True)
    total = sum(s.detections for s in segments)
    kept = training_of(directory, entry)
    check_same_training(directory, kept, training)
    grows = kept is not None and not fresh
    if kept is None:
        kept = (_install(folder, training, generation) if training else
                _train(directory, folder, segments, total, generation))
    codes = f"codes-{generation}.faiss"
    start = entry.detections if grows else 0
    encode_block(kept.path, _rows_from(directory, segments, start), folder / codes)
    blocks = (list(entry.params["blocks"]) if grows else []) + [codes]
    rescore = update_rescore(directory, entry.params.get(RESCORE) if grows else None, segments,
                             generation)
    return _lists_entry(folder, kept, blocks, total, generation, rescore)


def merge_ivfpq_shards(directory: Path, segments: list[SegmentEntry],
                       shards: list[tuple[Path, Manifest]], training: Training,
                       generation: int) -> IndexEntry:
    """The ivfpq entry of ``segments`` (every segment of the galleries ``shards``, in the
    merged order), made of the shards' code files, all encoded against ``training``: each
    copied with its ids renumbered to the merged rows, then merged into lists on disk.
    Nothing is trained or encoded."""
    folder = Path(directory) / FOLDER
    folder.mkdir(exist_ok=True)
    merged_start = dict(zip((s.file for s in segments), _starts(segments)))
    installed = _install(folder, training, generation)
    blocks: list[str] = []
    for path, m in shards:
        to_merged = _merged_rows(m.segments, merged_start)
        for block in m.index.params["blocks"]:
            name = f"codes-{generation}-{len(blocks) + 1}.faiss"
            renumber_block(path / FOLDER / block, to_merged, folder / name)
            blocks.append(name)
    return _lists_entry(folder, installed, blocks, sum(s.detections for s in segments),
                        generation, update_rescore(directory, None, segments, generation))


def _merged_rows(shard_segments: tuple[SegmentEntry, ...], merged_start: dict[str, int]):
    """shard row ids -> merged row ids: each segment's rows move together to where the merged
    order puts its first one."""
    starts = _starts(shard_segments)
    shift = np.array([merged_start[s.file] for s in shard_segments], np.int64) - starts
    return lambda ids: ids + shift[np.searchsorted(starts, ids, "right") - 1]


def _starts(segments) -> np.ndarray:
    """The first row of each segment (rows are numbered in manifest order)."""
    return np.r_[0, np.cumsum([s.detections for s in segments])][:-1].astype(np.int64)


def _lists_entry(folder: Path, training: Training, blocks: list[str], total: int,
                 generation: int, rescore: dict) -> IndexEntry:
    """Merge the code files ``blocks`` into ``lists-N``: the new index entry (``rescore``:
    the record of its re-scoring file)."""
    lists = f"lists-{generation}"
    merge_blocks(training.path, [folder / b for b in blocks], folder / f"{lists}.faiss",
                 folder / f"{lists}.ivfdata")
    params = {**training.params, "trained": training.path.name, "blocks": blocks,
              "data": f"{lists}.ivfdata", RESCORE: rescore}
    return IndexEntry(f"{FOLDER}/{lists}.faiss", "ivfpq", True, total, generation, params)


def _install(folder: Path, training: Training, generation: int) -> Training:
    """Another gallery's training as this gallery's ``trained-N.faiss`` (a hard link)."""
    path = link_or_copy(training.path, folder / f"trained-{generation}.faiss")
    return Training(folder.parent, path, training.params)


def _train(directory: Path, folder: Path, segments: list[SegmentEntry], total: int,
           generation: int) -> Training:
    """Train the empty index on a sample of the committed embeddings."""
    size = min(total, IVFPQ_MAX_LISTS * IVFPQ_TRAIN_PER_LIST)
    rows = np.sort(np.random.default_rng(TRAIN_SEED).choice(total, size, replace=False))
    sample = read_rows(directory, segments, rows)
    factory = ivfpq_factory(sample.shape[1], size)
    index = train_ivfpq(sample, factory)
    path = folder / f"trained-{generation}.faiss"
    write_index(index, path)
    return Training(Path(directory), path, {
        "factory": factory, "trained_on": int(size), "nprobe": int(index.nprobe),
        "rescore_factor": RESCORE_FACTOR,
        FINGERPRINT: hashlib.sha256(path.read_bytes()).hexdigest()})


def _rows_from(directory: Path, segments: list[SegmentEntry], start: int):
    """(first id, embeddings dataset) of every detection row from ``start``, segment by segment."""
    row = 0
    for s in segments:
        if row + s.detections > start:
            path = Path(directory) / SEGMENTS / s.file
            with reading_segment(directory, path), h5py.File(path, "r") as f:
                skip = max(0, start - row)
                yield row + skip, f["detections/embeddings"][skip:]
        row += s.detections


@functools.lru_cache(maxsize=OPEN_SEGMENTS)
def _open_embeddings(path: Path):
    """The embeddings dataset of a segment, its file kept open: a re-scoring query reads a few
    rows of many segments, and opening an HDF5 file costs more than reading them. Segments are
    immutable, so a kept handle never reads stale rows."""
    return h5py.File(path, "r")["detections/embeddings"]


def close_segment_files() -> None:
    """Close the segment files this process keeps open (before it rewrites one in place)."""
    _open_embeddings.cache_clear()


def read_rows(directory: Path, segments, rows: np.ndarray) -> np.ndarray:
    """(len(rows), D) float32 embeddings of detection ids ``rows`` (any order), each segment
    opened once and read in increasing order."""
    rows = np.asarray(rows, np.int64).ravel()
    starts = np.r_[0, np.cumsum([s.detections for s in segments])].astype(np.int64)
    which = np.searchsorted(starts, rows, side="right") - 1
    out = None
    for k in np.unique(which):
        pick = np.flatnonzero(which == k)
        local = rows[pick] - starts[k]
        order = np.argsort(local, kind="stable")
        unique, back = np.unique(local[order], return_inverse=True)
        path = Path(directory) / SEGMENTS / segments[k].file
        with reading_segment(directory, path):
            emb = _open_embeddings(path)
            # float16 or float32 on disk; float16 rows are unit norm to 1e-3: normalised again,
            # so that a detection's similarity to itself is 1 and cosines are exact
            got = l2_normalize(np.asarray(emb[unique.tolist()], np.float32))
        if out is None:
            out = np.zeros((len(rows), got.shape[1]), np.float32)
        out[pick[order]] = got[back]
    return out if out is not None else np.zeros((0, 0), np.float32)


def ivfpq_files(entry: IndexEntry) -> set[str]:
    """The files under ``ivfpq/`` that ``entry`` needs."""
    if entry.kind != "ivfpq":
        return set()
    p = entry.params
    return {p["trained"], p["data"], Path(entry.file).name, *p["blocks"],
            *([p[RESCORE]["file"]] if RESCORE in p else [])}


def lists_data_problem(lists_path: Path, index) -> str | None:
    """What is wrong with the on-disk lists file beside ``lists_path`` (the index read from
    it), or None: a truncated one would fault when a search maps past its end."""
    need, data = ondisk_data_bytes(index), Path(lists_path).with_suffix(".ivfdata")
    if not data.is_file() or data.stat().st_size < need:
        return f"its lists file {data.name} is missing or shorter than {need} bytes"
    return None


def update_rescore(directory: Path, record: dict | None, segments: list[SegmentEntry],
                   generation: int) -> dict:
    """The record of the re-scoring file of ``segments``: ``record``'s file (the last
    commit's) with the rows beyond it appended, bytes past its end first cut off (a commit
    killed mid-append); a new ``rescore-N.f16`` written whole when there is none to append
    to (``record`` None, or its file missing or shorter than it says)."""
    folder = Path(directory) / FOLDER
    total = sum(s.detections for s in segments)
    path = folder / record["file"] if record else None
    if path is not None and path.is_file() and path.stat().st_size >= record["bytes"]:
        with open(path, "r+b") as f:
            f.truncate(record["bytes"])
            f.seek(record["bytes"])
            size = _write_rescore_rows(f, directory, segments, record["rows"])
        return {"file": path.name, "rows": total, "bytes": size}
    path = folder / f"rescore-{generation}.f16"
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        size = _write_rescore_rows(f, directory, segments, 0)
    return {"file": path.name, "rows": total, "bytes": size}


def _write_rescore_rows(f, directory: Path, segments: list[SegmentEntry], start: int) -> int:
    """Write the rows from ``start`` on at ``f``'s position, synced; the file's size after."""
    for _, rows in _rows_from(directory, segments, start):
        f.write(np.ascontiguousarray(rows, RESCORE_DTYPE).tobytes())
    f.flush()
    os.fsync(f.fileno())
    return f.tell()


def rescore_record(m: Manifest) -> dict | None:
    """The record of the re-scoring file that holds every row of ``m``'s segments, or None
    (another index kind, a gallery made before the file, a part of a manifest)."""
    record = m.index.params.get(RESCORE) if m.index.kind == "ivfpq" else None
    return record if record and record["rows"] == m.detections else None


def rescore_size_problem(path: Path, record: dict) -> str | None:
    """What is wrong with the size of the re-scoring file ``path``, or None (bytes past the
    record's are a commit killed mid-append: ignored)."""
    if not path.is_file() or path.stat().st_size < record["bytes"]:
        return f"its re-scoring file {path.name} is missing or shorter than {record['bytes']} bytes"
    return None


@functools.lru_cache(maxsize=4)
def _rescore_fd(path: Path, inode: int) -> int:
    """A descriptor of the re-scoring file ``path`` (``inode``: a file written anew under the
    same name gets its own), kept open, without read-ahead: a query reads a few hundred
    scattered rows, and the kernel's default would read ~128 KiB around each."""
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    return fd


def read_rescore_rows(directory: Path, record: dict, rows: np.ndarray) -> np.ndarray:
    """(len(rows), D) float32 unit-norm embeddings of detection ids ``rows`` (any order) from
    the re-scoring file of ``record``, one ``pread`` per row (a mapping would count every page
    the kernel maps around each row in the search's RSS: 3.4 GB at 10M); DamagedGalleryError
    naming the file when it is too short."""
    path = Path(directory) / FOLDER / record["file"]
    problem = rescore_size_problem(path, record)
    if problem:
        raise damaged(directory, path, problem, INDEX_FIX)
    fd, row_bytes = _rescore_fd(path, path.stat().st_ino), record["bytes"] // record["rows"]
    unique, back = np.unique(np.asarray(rows, np.int64), return_inverse=True)
    for r in unique:     # every row's read queued at once: 250 cold rows 6 ms, not 20 one by one
        os.posix_fadvise(fd, int(r) * row_bytes, row_bytes, os.POSIX_FADV_WILLNEED)
    data = b"".join(os.pread(fd, row_bytes, int(r) * row_bytes) for r in unique)
    table = np.frombuffer(data, RESCORE_DTYPE).reshape(len(unique), -1)
    return l2_normalize(table.astype(np.float32))[back]   # normalised as read_rows does


def rescore_problem(directory: Path, m: Manifest) -> tuple[Path, str] | None:
    """(file, problem) when the re-scoring file ``m`` names is too short or its rows are not
    the segments' embeddings in gallery row order (`gallery verify`); None when it is right
    or ``m`` names none."""
    record = m.index.params.get(RESCORE) if m.index.kind == "ivfpq" else None
    if record is None:
        return None
    path = Path(directory) / FOLDER / record["file"]
    problem = (rescore_size_problem(path, record) or
               (record["rows"] != m.detections and
                f"its re-scoring file holds {record['rows']} rows, the gallery {m.detections}"))
    if problem:
        return path, problem
    row_bytes = record["bytes"] // record["rows"]
    for segment, first in zip(m.segments, _starts(m.segments)):
        if not segment.detections:
            continue
        try:
            (_, rows), = _rows_from(directory, [segment], 0)
        except DamagedGalleryError:     # named as the segment's own problem
            continue
        stored = np.fromfile(path, RESCORE_DTYPE, rows.size, offset=int(first) * row_bytes)
        if not np.array_equal(stored.reshape(rows.shape), np.asarray(rows, RESCORE_DTYPE)):
            return path, (f"its re-scoring file's rows {first}..{first + len(rows) - 1} are "
                          f"not the embeddings of segment {segment.file}")
    return None
