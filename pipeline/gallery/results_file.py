"""The results file: every gallery detection and every query embedding of one model (HDF5).

Layout (schema "person-search-results/1"; root attributes ``schema`` and ``dataset``):
  /gallery/images (M,) UTF-8   /gallery/offsets (M+1,) int64 (detections of image i are rows
  offsets[i]:offsets[i+1])     /gallery/boxes (T,4) float32 x1,y1,x2,y2 original pixels
  /gallery/scores (T,) float32 /gallery/embeddings (T,D) float32|float16
  /query/images (Q,) UTF-8     /query/boxes (Q,4) float32   /query/embeddings (Q,D)
Queries are in the dataset's query order; gallery images in any order, each test image once.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from pipeline.data.records import DatasetError, PersonSearchData

SCHEMA = "person-search-results/1"
QUERY_BOX_TOLERANCE = 0.5   # pixels
REQUIRED_KEYS = ("gallery/images", "gallery/offsets", "gallery/boxes", "gallery/scores",
                 "gallery/embeddings", "query/images", "query/boxes", "query/embeddings")


class ResultsFileError(DatasetError):
    """The results file is malformed or does not belong to the dataset. Names file and problem.

    A :class:`DatasetError` (hence a ``ValueError``), so the CLI reports it as a clean message.
    """


@dataclass
class SearchResults:
    """Detections per gallery image in ``data.gallery`` order, embeddings L2-normalised."""

    offsets: np.ndarray          # (M+1,) int64
    boxes: np.ndarray            # (T,4) float32
    scores: np.ndarray           # (T,) float32
    embeddings: np.ndarray       # (T,D) float32
    query_boxes: np.ndarray      # (Q,4) float32
    query_embeddings: np.ndarray  # (Q,D) float32

    def image_of_detection(self) -> np.ndarray:
        """(T,) gallery image index of every detection."""
        return np.repeat(np.arange(len(self.offsets) - 1), np.diff(self.offsets))


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """(N,D) -> float32 rows of unit norm; zero rows stay zero (no NaN)."""
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norm > 0, x / np.where(norm > 0, norm, 1), 0).astype(np.float32)


def write_results(path, dataset: str, gallery_images, offsets, boxes, scores, embeddings,
                  query_images, query_boxes, query_embeddings) -> Path:
    """Write a results file (shapes as in the module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = h5py.string_dtype("utf-8")
    with h5py.File(path, "w") as f:
        f.attrs["schema"], f.attrs["dataset"] = SCHEMA, dataset
        g = f.create_group("gallery")
        g.create_dataset("images", data=np.array(list(gallery_images), dtype=object), dtype=text)
        g.create_dataset("offsets", data=np.asarray(offsets, np.int64))
        g.create_dataset("boxes", data=_boxes(boxes))
        g.create_dataset("scores", data=np.asarray(scores, np.float32).ravel())
        emb = np.asarray(embeddings)
        g.create_dataset("embeddings", data=emb if emb.dtype == np.float16 else emb.astype(np.float32))
        q = f.create_group("query")
        q.create_dataset("images", data=np.array(list(query_images), dtype=object), dtype=text)
        q.create_dataset("boxes", data=_boxes(query_boxes))
        qe = np.asarray(query_embeddings)
        q.create_dataset("embeddings", data=qe if qe.dtype == np.float16 else qe.astype(np.float32))
    return path


def _boxes(boxes) -> np.ndarray:
    """float32 boxes; an empty input becomes (0,4); other shapes are stored as given."""
    boxes = np.asarray(boxes, np.float32)
    return boxes.reshape(0, 4) if boxes.size == 0 else boxes


def read_results(path, data: PersonSearchData) -> SearchResults:
    """Read and validate a results file against ``data``; gallery reordered to data.gallery."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} does not exist")
    with h5py.File(path, "r") as f:
        _check_attrs(f, path, data.dataset)
        missing = [k for k in REQUIRED_KEYS if k not in f]
        if missing:
            raise ResultsFileError(f"{path}: missing dataset /{missing[0]}")
        arr = {k: f[k][()] for k in REQUIRED_KEYS}
    return _validate(arr, path, data)


def _check_attrs(f, path, dataset):
    if f.attrs.get("schema") != SCHEMA:
        raise ResultsFileError(f"{path}: schema attribute is {f.attrs.get('schema')!r}, "
                               f"expected {SCHEMA!r}")
    if f.attrs.get("dataset") != dataset:
        raise ResultsFileError(f"{path}: results are for dataset {f.attrs.get('dataset')!r}, "
                               f"not {dataset!r}")


def _names(a) -> list[str]:
    return [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in np.asarray(a).ravel()]


def _validate(arr: dict, path: Path, data: PersonSearchData) -> SearchResults:
    def fail(msg):
        raise ResultsFileError(f"{path}: {msg}")
    images, offsets = _names(arr["gallery/images"]), np.asarray(arr["gallery/offsets"])
    boxes, scores = arr["gallery/boxes"], arr["gallery/scores"]
    emb, q_emb = arr["gallery/embeddings"], arr["query/embeddings"]
    t = len(scores)
    if scores.ndim != 1:
        fail(f"gallery/scores has shape {scores.shape}, expected (T,)")
    if not np.issubdtype(offsets.dtype, np.integer):
        fail(f"gallery/offsets must be integers, not {offsets.dtype}")
    for key, a in (("gallery/embeddings", emb), ("query/embeddings", q_emb)):
        if a.dtype not in (np.float32, np.float16):
            fail(f"{key} must be float32 or float16, not {a.dtype}")
    if offsets.ndim != 1 or len(offsets) != len(images) + 1:
        fail(f"gallery/offsets has shape {offsets.shape}, expected ({len(images) + 1},)")
    if offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] != t:
        fail(f"gallery/offsets must start at 0, never decrease and end at {t} detections")
    if boxes.shape != (t, 4):
        fail(f"gallery/boxes has shape {boxes.shape}, expected ({t}, 4)")
    if emb.ndim != 2 or len(emb) != t:
        fail(f"gallery/embeddings has shape {emb.shape}, expected ({t}, D)")
    if q_emb.ndim != 2 or q_emb.shape[1] != emb.shape[1]:
        fail(f"query/embeddings has shape {q_emb.shape}; D must equal the gallery's {emb.shape[1]}")
    for key, a in (("gallery/boxes", boxes), ("gallery/scores", scores),
                   ("gallery/embeddings", emb), ("query/embeddings", q_emb)):
        if not np.all(np.isfinite(a)):
            fail(f"{key} holds NaN or infinite values")
    order = _gallery_order(images, data, fail)
    q_images, q_boxes = _names(arr["query/images"]), np.asarray(arr["query/boxes"], np.float32)
    _check_queries(q_images, q_boxes, q_emb, data, fail)
    counts = np.diff(offsets)[order]
    rows = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in order]) \
        if len(order) else np.zeros(0, np.int64)
    return SearchResults(np.r_[0, np.cumsum(counts)].astype(np.int64),
                         np.asarray(boxes, np.float32)[rows], np.asarray(scores, np.float32)[rows],
                         l2_normalize(emb[rows]), q_boxes, l2_normalize(q_emb))


def _gallery_order(images, data, fail) -> np.ndarray:
    position = {n: i for i, n in enumerate(images)}
    if len(position) != len(images):
        fail("gallery/images lists an image more than once")
    expected = [r.name for r in data.gallery]
    missing = [n for n in expected if n not in position]
    if missing:
        fail(f"gallery image {missing[0]!r} of the dataset is missing ({len(missing)} missing)")
    if len(images) != len(expected):
        extra = sorted(set(images) - set(expected))
        fail(f"gallery/images holds {len(extra)} images not in the test set, e.g. {extra[0]!r}")
    return np.array([position[n] for n in expected], np.int64)


def _check_queries(q_images, q_boxes, q_emb, data, fail):
    nq = len(data.queries)
    if len(q_images) != nq or q_boxes.shape != (nq, 4) or len(q_emb) != nq:
        fail(f"query datasets hold {len(q_images)} images, {q_boxes.shape} boxes, {len(q_emb)} "
             f"embeddings; the dataset has {nq} queries")
    for i, (name, box, q) in enumerate(zip(q_images, q_boxes, data.queries)):
        if name != q.image:
            fail(f"query {i} is image {name!r}, the dataset's query {i} is {q.image!r}")
        if np.abs(box - np.asarray(q.box, np.float32)).max() > QUERY_BOX_TOLERANCE:
            fail(f"query {i} box {box.tolist()} differs from the dataset's {np.asarray(q.box).tolist()}")
