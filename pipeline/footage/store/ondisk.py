"""The ``ivfpq`` index of a gallery: trained once, codes added per commit, lists on disk.

Folder ``ivfpq/`` of the gallery: ``trained.faiss`` (the empty index trained at the first
``ivfpq`` commit on a sample of the embeddings, :func:`pipeline.runtime.faiss_index.ivfpq_factory`),
``codes-N.faiss`` (the codes of the rows commit N added; immutable, like segments) and
``lists-N.faiss`` + ``lists-N.ivfdata`` (every code file merged with
``faiss.contrib.ondisk.merge_ondisk`` into inverted lists on disk). A commit encodes only its
new rows and merges the code files again (a copy of 40 bytes per detection, not a retraining);
the manifest names the new files last, so a run killed at any point leaves the last complete
index, and the next commit's tidy-up drops what no manifest names.
"""
from __future__ import annotations

import functools
from pathlib import Path

import h5py
import numpy as np

from pipeline.arrays import l2_normalize
from pipeline.runtime.faiss_index import (IVFPQ_MAX_LISTS, IVFPQ_TRAIN_PER_LIST, RESCORE_FACTOR,
                                          encode_block, ivfpq_factory, merge_blocks,
                                          ondisk_data_bytes, train_ivfpq, write_index)

from .damage import reading_segment
from .manifest import SEGMENTS, IndexEntry, SegmentEntry

FOLDER = "ivfpq"
TRAINED = "trained.faiss"
TRAIN_SEED = 0
OPEN_SEGMENTS = 512               # segment files kept open for re-scoring


def update_ivfpq(directory: Path, entry: IndexEntry | None, segments: list[SegmentEntry],
                 generation: int) -> IndexEntry:
    """The ivfpq entry after adding the rows beyond ``entry`` (all rows when ``entry`` is not
    an ivfpq one: the index is trained first)."""
    folder = Path(directory) / FOLDER
    folder.mkdir(exist_ok=True)
    total = sum(s.detections for s in segments)
    grows = entry is not None and entry.kind == "ivfpq" and (folder / TRAINED).is_file()
    params = dict(entry.params) if grows else _train(directory, folder, segments, total)
    start = entry.detections if grows else 0
    codes = f"codes-{generation}.faiss"
    encode_block(folder / TRAINED, _rows_from(directory, segments, start), folder / codes)
    blocks = params.get("blocks", []) + [codes]
    lists = f"lists-{generation}"
    merge_blocks(folder / TRAINED, [folder / b for b in blocks], folder / f"{lists}.faiss",
                 folder / f"{lists}.ivfdata")
    params.update(blocks=blocks, data=f"{lists}.ivfdata")
    return IndexEntry(f"{FOLDER}/{lists}.faiss", "ivfpq", True, total, generation, params)


def _train(directory: Path, folder: Path, segments: list[SegmentEntry], total: int) -> dict:
    """Train the empty index on a sample of the committed embeddings; its parameters."""
    size = min(total, IVFPQ_MAX_LISTS * IVFPQ_TRAIN_PER_LIST)
    rows = np.sort(np.random.default_rng(TRAIN_SEED).choice(total, size, replace=False))
    sample = read_rows(directory, segments, rows)
    factory = ivfpq_factory(sample.shape[1], size)
    index = train_ivfpq(sample, factory)
    write_index(index, folder / TRAINED)
    return {"factory": factory, "trained_on": int(size), "trained": TRAINED,
            "nprobe": int(index.nprobe), "rescore_factor": RESCORE_FACTOR, "blocks": []}


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
    return {p["trained"], p["data"], Path(entry.file).name, *p["blocks"]}


def lists_data_problem(lists_path: Path, index) -> str | None:
    """What is wrong with the on-disk lists file beside ``lists_path`` (the index read from
    it), or None: a truncated one would fault when a search maps past its end."""
    need, data = ondisk_data_bytes(index), Path(lists_path).with_suffix(".ivfdata")
    if not data.is_file() or data.stat().st_size < need:
        return f"its lists file {data.name} is missing or shorter than {need} bytes"
    return None
