"""The FAISS index of a footage gallery: inner products of unit-norm embeddings.

``flat`` (default) is exact: ``IndexFlatIP`` compares a query with every stored embedding.
``ivf`` (``IndexIVFFlat``, :data:`IVF_NPROBE` of about 4*sqrt(N) lists probed) and ``hnsw``
(``IndexHNSWFlat``, M = :data:`HNSW_M`) answer very large galleries faster but may miss true
neighbours: the gallery records the kind and search reports such results as approximate.
Filters (cameras, a time window, excluded frames) become an ``IDSelectorBitmap`` handed to
FAISS, so a filtered search still returns the best ``k`` allowed detections (approximate
kinds: the best they find among the allowed ones). Files are written with FAISS's own
``write_index`` beside their final name and moved into place whole.
"""
from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np

INDEX_KINDS = ("flat", "ivf", "hnsw")
IVF_NPROBE = 16
IVF_POINTS_PER_LIST = 39          # FAISS warns when k-means has fewer points per centroid
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128


def build_index(embeddings: np.ndarray, kind: str = "flat"):
    """A new index of ``kind`` holding (N, D) float32 unit-norm ``embeddings`` (row = id)."""
    x = np.ascontiguousarray(embeddings, np.float32)
    d = x.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = int(np.clip(4 * np.sqrt(len(x)), 1, max(1, len(x) // IVF_POINTS_PER_LIST)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(x if len(x) else np.zeros((1, d), np.float32))
        index.nprobe = min(IVF_NPROBE, nlist)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        raise ValueError(f"index kind must be one of {INDEX_KINDS}, got {kind!r}")
    extend_index(index, x)
    return index


def extend_index(index, embeddings: np.ndarray) -> None:
    """Append rows (their ids continue from ``index.ntotal``)."""
    if len(embeddings):
        index.add(np.ascontiguousarray(embeddings, np.float32))


def write_index(index, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    faiss.write_index(index, str(tmp))
    os.replace(tmp, path)


def read_index(path: Path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FAISS index {path} is missing")
    return faiss.read_index(str(path))


def _params(index, k: int, selector):
    """Search parameters for ``index``'s kind, carrying the selector."""
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=selector, efSearch=max(inner.hnsw.efSearch, k))
    if isinstance(inner, faiss.IndexIVF):
        return faiss.SearchParametersIVF(sel=selector, nprobe=inner.nprobe)
    return faiss.SearchParameters(sel=selector)


def search_index(index, query: np.ndarray, k: int,
                 allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best (similarity, id) for one (D,) query, best first, among the ids where
    ``allowed`` (a (N,) bool mask; None = all) is True. Fewer when fewer exist."""
    n = index.ntotal
    if allowed is not None:
        allowed = np.asarray(allowed, bool)
        if allowed.shape != (n,):
            raise ValueError(f"filter mask has shape {allowed.shape}, the index {n} rows")
        n = int(allowed.sum())
    k = min(int(k), n)
    if k <= 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    q = np.ascontiguousarray(np.asarray(query, np.float32).reshape(1, -1))
    if allowed is None or allowed.all():
        params = _params(index, k, None) if isinstance(faiss.downcast_index(index),
                                                        faiss.IndexHNSW) else None
        sims, ids = index.search(q, k, params=params) if params else index.search(q, k)
    else:
        bits = np.packbits(allowed, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
        sims, ids = index.search(q, k, params=_params(index, k, selector))
    keep = ids[0] >= 0
    return sims[0][keep].astype(np.float32), ids[0][keep].astype(np.int64)
