"""The results file: every gallery detection and every query embedding of one model (HDF5).

Layout (schema "person-search-results/2"; root attributes ``schema`` and ``dataset``):
  /gallery/images (M,) UTF-8   /gallery/offsets (M+1,) int64 (detections of image i are rows
  offsets[i]:offsets[i+1])     /gallery/boxes (T,4) float32 x1,y1,x2,y2 original pixels
  /gallery/scores (T,) float32 /gallery/embeddings (T,D) float32|float16
  /query/images (Q,) UTF-8     /query/boxes (Q,4) float32   /query/embeddings (Q,D)
Optional, all four or none (the context of CBGM, ``evaluate --cbgm``): every person detected
in each query's own image, as for a gallery image, query person included:
  /query/context_offsets (Q+1,) int64   /query/context_boxes (C,4) float32
  /query/context_scores (C,) float32    /query/context_embeddings (C,D) float32|float16
Queries are in the dataset's query order; gallery images in any order, each test image once.
Schema 1 (no context group) is still read.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np

from cache.hdf5 import open_hdf5
from pipeline.data.published_boxes import PUBLISHED, choose
from pipeline.data.records import DatasetError, PersonSearchData
from cache.hdf5 import TEXT, read_text, text_column
from pipeline.arrays import l2_normalize
from pipeline.files import atomic_path
from pipeline.runtime.types import Detections

SCHEMA = "person-search-results/2"
READABLE_SCHEMAS = ("person-search-results/1", SCHEMA)
QUERY_BOX_TOLERANCE = 0.5   # pixels, from the released box or from its whole-pixel form
REQUIRED_KEYS = ("gallery/images", "gallery/offsets", "gallery/boxes", "gallery/scores",
                 "gallery/embeddings", "query/images", "query/boxes", "query/embeddings")
CONTEXT_KEYS = ("query/context_offsets", "query/context_boxes", "query/context_scores",
                "query/context_embeddings")


class ResultsFileError(DatasetError):
    """The results file is malformed or does not belong to the dataset. Names file and problem.

    A :class:`DatasetError` (hence a ``ValueError``), so the CLI reports it as a clean message.
    """


@dataclass
class SearchResults:
    """``gallery``: the detections per gallery image in ``data.gallery`` order; the query boxes
    and embeddings in query order; ``context``: the detections of each query's own image, per
    query (None when absent). Embeddings L2-normalised."""

    gallery: Detections
    query_boxes: np.ndarray      # (Q,4) float32
    query_embeddings: np.ndarray  # (Q,D) float32
    context: Detections | None = None


def write_results(path, dataset: str, gallery_images, gallery: Detections, query_images,
                  query_boxes, query_embeddings, context: Detections | None = None) -> Path:
    """Write a results file (shapes as in the module docstring), atomically (a temporary file
    renamed into place). ``context``: the detections of each query's own image, or None."""
    path = Path(path)
    with atomic_path(path) as partial, h5py.File(partial, "w") as f:
        f.attrs["schema"], f.attrs["dataset"] = SCHEMA, dataset
        g = f.create_group("gallery")
        g.create_dataset("images", data=text_column(gallery_images), dtype=TEXT)
        _write_detections(g, "", gallery)
        q = f.create_group("query")
        q.create_dataset("images", data=text_column(query_images), dtype=TEXT)
        q.create_dataset("boxes", data=_boxes(query_boxes))
        q.create_dataset("embeddings", data=_floats(query_embeddings))
        if context is not None:
            _write_detections(q, "context_", context)
    return path


def _write_detections(group, prefix: str, d: Detections) -> None:
    group.create_dataset(prefix + "offsets", data=np.asarray(d.offsets, np.int64))
    group.create_dataset(prefix + "boxes", data=_boxes(d.boxes))
    group.create_dataset(prefix + "scores", data=np.asarray(d.scores, np.float32).ravel())
    group.create_dataset(prefix + "embeddings", data=_floats(d.embeddings))


def _floats(a) -> np.ndarray:
    """Embeddings as stored: float16 kept, anything else float32."""
    a = np.asarray(a)
    return a if a.dtype == np.float16 else a.astype(np.float32)


def _boxes(boxes) -> np.ndarray:
    """float32 boxes; an empty input becomes (0,4); other shapes are stored as given."""
    boxes = np.asarray(boxes, np.float32)
    return boxes.reshape(0, 4) if boxes.size == 0 else boxes


def read_results(path, data: PersonSearchData) -> SearchResults:
    """Read and validate a results file against ``data``; gallery reordered to data.gallery."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} does not exist")
    with open_hdf5(path, ResultsFileError, "results file") as f:
        _check_attrs(f, path, data.dataset)
        missing = [k for k in REQUIRED_KEYS if k not in f]
        if missing:
            raise ResultsFileError(f"results file {path} is unusable: missing dataset "
                                   f"/{missing[0]}")
        present = [k for k in CONTEXT_KEYS if k in f]
        if present and len(present) < len(CONTEXT_KEYS):
            absent = next(k for k in CONTEXT_KEYS if k not in f)
            raise ResultsFileError(f"results file {path} is unusable: /{present[0]} is there "
                                   f"but /{absent} is missing (the context group is all four "
                                   "datasets or none)")
        try:
            arr = {k: f[k][()] for k in (*REQUIRED_KEYS, *present)}
        except (OSError, KeyError, TypeError, ValueError) as e:  # damaged data, or groups
            raise ResultsFileError(f"results file {path} is unusable: a dataset cannot be "
                                   f"read ({str(e).strip()[:160]})") from None
    return _validate(arr, path, data)


def _check_attrs(f, path, dataset):
    if f.attrs.get("schema") not in READABLE_SCHEMAS:
        raise ResultsFileError(f"results file {path} is unusable: its schema attribute is "
                               f"{f.attrs.get('schema')!r}, expected one of {READABLE_SCHEMAS}")
    if f.attrs.get("dataset") != dataset:
        raise ResultsFileError(f"{path}: results are for dataset {f.attrs.get('dataset')!r}, "
                               f"not {dataset!r}")


def _validate(arr: dict, path: Path, data: PersonSearchData) -> SearchResults:
    def fail(msg):
        raise ResultsFileError(f"{path}: {msg}")
    images = read_text(arr["gallery/images"])
    gallery = _detections(arr, "gallery", len(images), fail)
    q_emb = arr["query/embeddings"]
    _check_embeddings("query/embeddings", q_emb, gallery.embeddings.shape[1], fail)
    order = _gallery_order(images, data, fail)
    q_images, q_boxes = read_text(arr["query/images"]), np.asarray(arr["query/boxes"], np.float32)
    _check_queries(q_images, q_boxes, q_emb, data, fail)
    context = _detections(arr, "query/context_", len(q_images), fail,
                          gallery.embeddings.shape[1]) if CONTEXT_KEYS[0] in arr else None
    if not np.array_equal(order, np.arange(len(order))):    # not in the dataset's order
        gallery = gallery.select(order)
    gallery = replace(gallery, embeddings=l2_normalize(gallery.embeddings))
    return SearchResults(gallery, q_boxes, l2_normalize(q_emb), context)


def _detections(arr: dict, prefix: str, groups: int, fail, dim: int | None = None) -> Detections:
    """Check one offsets/boxes/scores/embeddings group (gallery or query context)."""
    sep = "/" if prefix == "gallery" else ""
    key = lambda name: f"{prefix}{sep}{name}"
    offsets, boxes = np.asarray(arr[key("offsets")]), arr[key("boxes")]
    scores, emb = arr[key("scores")], arr[key("embeddings")]
    t = len(scores)
    if scores.ndim != 1:
        fail(f"{key('scores')} has shape {scores.shape}, expected (T,)")
    if not np.issubdtype(offsets.dtype, np.integer):
        fail(f"{key('offsets')} must be integers, not {offsets.dtype}")
    if offsets.ndim != 1 or len(offsets) != groups + 1:
        fail(f"{key('offsets')} has shape {offsets.shape}, expected ({groups + 1},)")
    if offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] != t:
        fail(f"{key('offsets')} must start at 0, never decrease and end at {t} detections")
    if boxes.shape != (t, 4):
        fail(f"{key('boxes')} has shape {boxes.shape}, expected ({t}, 4)")
    if emb.ndim != 2 or len(emb) != t:
        fail(f"{key('embeddings')} has shape {emb.shape}, expected ({t}, D)")
    _check_embeddings(key("embeddings"), emb, emb.shape[1] if dim is None else dim, fail)
    for name, a in (("boxes", boxes), ("scores", scores)):
        if not np.all(np.isfinite(a)):
            fail(f"{key(name)} holds NaN or infinite values")
    normalise = l2_normalize if prefix != "gallery" else (lambda e: e)   # gallery: after reorder
    return Detections(offsets.astype(np.int64), np.asarray(boxes, np.float32),
                      np.asarray(scores, np.float32), normalise(emb))


def _check_embeddings(key: str, emb: np.ndarray, dim: int, fail):
    if emb.dtype not in (np.float32, np.float16):
        fail(f"{key} must be float32 or float16, not {emb.dtype}")
    if emb.ndim != 2 or emb.shape[1] != dim:
        fail(f"{key} has shape {emb.shape}; D must equal the gallery's {dim}")
    if not np.all(np.isfinite(emb)):
        fail(f"{key} holds NaN or infinite values")


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
    """Names in query order; each box within QUERY_BOX_TOLERANCE of the dataset's released box
    or of its whole-pixel form (a file written either way belongs to the dataset)."""
    nq = len(data.queries)
    if len(q_images) != nq or q_boxes.shape != (nq, 4) or len(q_emb) != nq:
        fail(f"query datasets hold {len(q_images)} images, {q_boxes.shape} boxes, {len(q_emb)} "
             f"embeddings; the dataset has {nq} queries")
    for i, (name, q) in enumerate(zip(q_images, data.queries)):
        if name != q.image:
            fail(f"query {i} is image {name!r}, the dataset's query {i} is {q.image!r}")
    exact = np.array([q.box for q in data.queries], np.float64).reshape(-1, 4)
    whole = np.array([choose(q.box, q.published_box, data.dataset, PUBLISHED)[0]
                      for q in data.queries]).reshape(-1, 4)
    far = np.minimum(np.abs(q_boxes - exact).max(1, initial=0),
                     np.abs(q_boxes - whole).max(1, initial=0)) > QUERY_BOX_TOLERANCE
    if far.any():
        i = int(np.argmax(far))
        fail(f"query {i} box {q_boxes[i].tolist()} differs from the dataset's "
             f"{exact[i].tolist()} (whole pixels: {whole[i].tolist()})")
