"""FAISS indexes over unit-norm embeddings (inner product = cosine): the one builder, the one
IVF rule and the one set of constants for the footage gallery and the evaluator.

Kinds (:data:`INDEX_KINDS`):

- ``flat`` (default) is exact: ``IndexFlatIP`` compares a query with every stored embedding.
- ``ivf`` (``IndexIVFFlat``, :func:`ivf_lists` lists, :data:`IVF_NPROBE` probed) and ``hnsw``
  (``IndexHNSWFlat``, M = :data:`HNSW_M`) answer large galleries faster but may miss true
  neighbours.
- ``ivfpq`` (:func:`ivfpq_factory`, e.g. ``IVF4096,PQ32``: 32-byte product-quantized codes
  under a coarse quantizer of at most :data:`IVFPQ_MAX_LISTS` lists, chosen by
  ``bench/bench_gallery_search.py``) is for galleries that do not fit in RAM. It is trained
  once (:func:`train_ivfpq`, on a sample), codes are added block by block
  (:func:`encode_block`, one immutable file each; :func:`renumber_block` gives a copy other
  ids without encoding again, for a merge of shards) and the blocks are merged into inverted lists
  on disk with ``faiss.contrib.ondisk.merge_ondisk`` (:func:`merge_blocks`); a search maps them
  read-only (:func:`read_ondisk`), so it needs little RAM whatever the gallery's size, and
  re-scores the best :data:`RESCORE_FACTOR` x k candidates with the float embeddings
  (:func:`search_index`'s ``rescore``), so the similarities it returns are exact.

Approximate kinds are recorded and every answer says so. Filters (cameras, a time window,
excluded frames) become an ``IDSelectorBitmap`` handed to FAISS, so a filtered search still
returns the best ``k`` allowed detections (approximate kinds: the best they find among the
allowed ones). Files are written with FAISS's own ``write_index`` beside their final name and
moved into place whole.

:class:`SimilarityIndex` serves the evaluator: exact (Q, R) similarity rows of all detections
(or a query's subset) through FAISS's brute-force kernels, on the GPU when there is one.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from pathlib import Path
from typing import Callable

import faiss
import numpy as np
from faiss.contrib.ondisk import merge_ondisk

from pipeline.files import atomic_path

INDEX_KINDS = ("flat", "ivf", "hnsw", "ivfpq")
IVF_NPROBE = 16
IVF_POINTS_PER_LIST = 39          # FAISS warns when k-means has fewer points per centroid
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
EVAL_IVF_K = 2048                 # evaluator, ivf: detections beyond its best 2048 rank last
# ivfpq (bench/bench_gallery_search.py, BENCHMARKS.md "Recall after re-scoring"): the coarse
# k-means over at most 4096 lists trains in minutes on 2 cores; 32 sub-quantizers of 8 bits
# make 32-byte codes (1/32 of 256 float32s); 64 probed lists and 5 x k re-scored candidates
# find the exact top 50 of Re-ID-like embeddings (recall@50 as with 10 x at 200k and 10M;
# 2-3 x lose some; 16 probes already do: 64 is the margin; more re-scored candidates only
# cost reads).
IVFPQ_MAX_LISTS = 4096
IVFPQ_SUBQUANTIZERS = 32
IVFPQ_BITS = 8
IVFPQ_NPROBE = 64
IVFPQ_TRAIN_PER_LIST = 64         # training sample: lists x this many embeddings
IVFPQ_KMEANS_ITERATIONS = 10
RESCORE_FACTOR = 5
ENCODE_BATCH = 65_536             # rows encoded at a time: bounds the memory of a commit


def ivf_lists(n: int, cap: int | None = None) -> int:
    """The IVF rule: about 4 sqrt(n) lists, at least :data:`IVF_POINTS_PER_LIST` training
    points per list, at most ``cap``."""
    lists = int(np.clip(4 * np.sqrt(n), 1, max(1, n // IVF_POINTS_PER_LIST)))
    return max(1, min(lists, cap)) if cap else lists


def build_index(embeddings: np.ndarray, kind: str = "flat", *, nlist: int | None = None,
                nprobe: int = IVF_NPROBE):
    """A new in-memory index of ``kind`` (flat, ivf or hnsw) holding (N, D) float32 unit-norm
    ``embeddings`` (row = id); ``nlist`` overrides :func:`ivf_lists` for ``ivf``."""
    x = np.ascontiguousarray(embeddings, np.float32)
    d = x.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = nlist or ivf_lists(len(x))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(x if len(x) else np.zeros((1, d), np.float32))
        index.nprobe = min(nprobe, nlist)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        raise ValueError(f"index kind must be one of {INDEX_KINDS[:3]} here, got {kind!r}")
    extend_index(index, x)
    return index


def extend_index(index, embeddings: np.ndarray) -> None:
    """Append rows (their ids continue from ``index.ntotal``)."""
    if len(embeddings):
        index.add(np.ascontiguousarray(embeddings, np.float32))


def write_index(index, path: Path) -> None:
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def read_index(path: Path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FAISS index {path} is missing")
    return faiss.read_index(str(path))


# ------------------------------------------------------------------------------ ivfpq

def ivfpq_factory(dim: int, sample: int) -> str:
    """The ``index_factory`` string for ``dim``-d embeddings trained on ``sample`` of them:
    ``IVF{lists},PQ{M}`` (``x{bits}`` when a tiny sample cannot train 256 centroids per
    sub-quantizer). M is the largest divisor of ``dim`` up to :data:`IVFPQ_SUBQUANTIZERS`."""
    m = max(k for k in range(1, min(dim, IVFPQ_SUBQUANTIZERS) + 1) if dim % k == 0)
    bits = int(np.clip(np.floor(np.log2(max(sample, 2))), 1, IVFPQ_BITS))
    lists = ivf_lists(sample, IVFPQ_MAX_LISTS)
    return f"IVF{lists},PQ{m}" + ("" if bits == IVFPQ_BITS else f"x{bits}")


def train_ivfpq(sample: np.ndarray, factory: str):
    """An empty ``factory`` index trained on (S, D) float32 unit-norm ``sample``."""
    x = np.ascontiguousarray(sample, np.float32)
    index = faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.niter = IVFPQ_KMEANS_ITERATIONS
    ivf.cp.min_points_per_centroid = 1     # a small gallery's sample: no warning per list
    pq_index = faiss.downcast_index(ivf)
    pq_index.pq.cp.min_points_per_centroid = 1
    pq_index.do_polysemous_training = False  # the factory's default: minutes, unused here
    ivf.verbose = False
    index.train(x)
    ivf.nprobe = min(IVFPQ_NPROBE, ivf.nlist)
    return index


def encode_block(trained_path: Path, chunks, out: Path) -> int:
    """Codes of the rows in ``chunks`` ((first id, (n, D) array or HDF5 dataset) pairs) as a
    small ivfpq file at ``out`` (a copy of the trained index holding these rows only), read
    :data:`ENCODE_BATCH` rows at a time. Returns the number of rows."""
    index = read_index(trained_path)
    for first_id, embeddings in chunks:
        for start in range(0, len(embeddings), ENCODE_BATCH):
            x = np.ascontiguousarray(embeddings[start:start + ENCODE_BATCH], np.float32)
            index.add_with_ids(x, np.arange(first_id + start, first_id + start + len(x)))
    write_index(index, out)
    return int(index.ntotal)


def renumber_block(block_path: Path, new_ids: Callable[[np.ndarray], np.ndarray],
                   out: Path) -> int:
    """A copy at ``out`` of the code file ``block_path`` (:func:`encode_block`) whose ids are
    ``new_ids(old ids)``: its codes are copied as they are, not encoded again. Returns the
    number of rows."""
    index = read_index(block_path)
    lists = faiss.extract_index_ivf(index).invlists
    for k in range(lists.nlist):
        n = lists.list_size(k)
        if n:
            ids = faiss.rev_swig_ptr(lists.get_ids(k), n)   # the list's own memory
            ids[:] = new_ids(ids.copy())
    write_index(index, out)
    return int(index.ntotal)


def merge_blocks(trained_path: Path, block_paths: list[Path], out_index: Path,
                 out_data: Path) -> int:
    """Merge the code files ``block_paths`` into on-disk inverted lists ``out_data`` and the
    index file ``out_index`` that names them (each written beside its name and moved into
    place, the data first). Returns the number of vectors."""
    index = read_index(trained_path)
    with atomic_path(out_data) as tmp_data:
        with _quiet_stdout():         # OnDiskInvertedLists prints each resize of its file
            merge_ondisk(index, [str(p) for p in block_paths], str(tmp_data))
        lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
        lists.filename = str(out_data)  # the name the index file records (its base name counts)
    write_index(index, out_index)
    return int(index.ntotal)


def read_ondisk(path: Path):
    """An ivfpq index whose inverted lists are mapped read-only from the data file beside it.
    (``IO_FLAG_MMAP`` on such a file crashes FAISS 1.15.1's search; ``ONDISK_SAME_DIR`` finds
    the data beside the index wherever the folder has moved, and OnDiskInvertedLists maps it.)"""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FAISS index {path} is missing")
    with _quiet_stdout():             # FAISS prints the data file's path as it opens it
        return faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)


def ondisk_data_bytes(index) -> int:
    """How many bytes the on-disk lists file of a :func:`read_ondisk` index must hold (a
    shorter one, truncated, would fault when a search maps past its end)."""
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    return int(lists.totsize)


@contextlib.contextmanager
def _quiet_stdout():
    """FAISS's C++ ``printf`` lines must not reach stdout (``--json`` output, the server):
    file descriptor 1 points at /dev/null meanwhile, and C's buffer is flushed before."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


# ------------------------------------------------------------------------------ search

def _params(index, k: int, selector):
    """Search parameters for ``index``'s kind, carrying the selector."""
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=selector, efSearch=max(inner.hnsw.efSearch, k))
    ivf = faiss.try_extract_index_ivf(inner)
    if ivf is not None:
        return faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe)
    return faiss.SearchParameters(sel=selector)


def search_index(index, query: np.ndarray, k: int, allowed: np.ndarray | None = None,
                 rescore=None, rescore_factor: int = RESCORE_FACTOR
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best (similarity, id) for one (D,) query, best first, among the ids where
    ``allowed`` (a (N,) bool mask; None = all) is True. Fewer when fewer exist. With
    ``rescore`` (ids -> their (n, D) float embeddings) the index proposes
    ``rescore_factor`` x k candidates and their exact similarities rank them."""
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
    wanted = min(n, k * rescore_factor) if rescore is not None else k
    selector = None
    if allowed is not None and not allowed.all():
        bits = np.packbits(allowed, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
    sims, ids = index.search(q, wanted, params=_params(index, wanted, selector))
    keep = ids[0] >= 0
    sims, ids = sims[0][keep].astype(np.float32), ids[0][keep].astype(np.int64)
    if rescore is None:
        return sims, ids
    exact = np.asarray(rescore(ids), np.float32) @ q[0]
    order = np.lexsort((ids, -exact))[:k]          # best first; ties by id, as flat does
    return exact[order], ids[order]


# ------------------------------------------------------------------------------ evaluator

def gpu_available() -> bool:
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


class SimilarityIndex:
    """Inner-product index over (T,D) float32 L2-normalised gallery embeddings, for the
    evaluator. ``flat``: exact similarity rows (evaluation ranks every detection of a query's
    gallery: a top-k shorter than the gallery changes AP), computed by the caller one query
    chunk at a time (memory ``chunk * rows * 4`` bytes). ``ivf`` (approximate, flagged so):
    detections the probed lists do not return among the ``ivf_k`` best get -inf (rank last)."""

    def __init__(self, embeddings: np.ndarray, kind: str = "flat", *, use_gpu: bool | None = None,
                 nlist: int | None = None, nprobe: int = IVF_NPROBE, ivf_k: int = EVAL_IVF_K):
        if kind not in ("flat", "ivf"):
            raise ValueError(f"evaluation index kind must be flat or ivf, got {kind!r}")
        self.embeddings = np.ascontiguousarray(embeddings, np.float32)
        self.kind, self.ivf_k, self.nlist, self.nprobe = kind, ivf_k, nlist, nprobe
        self.use_gpu = gpu_available() if use_gpu is None else bool(use_gpu)
        self.approximate = kind == "ivf"
        self._index = None
        self._gpu_res = None
        if self.approximate:
            self._index = self._build()

    @property
    def ntotal(self) -> int:
        return len(self.embeddings)

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    @property
    def index(self):
        """The FAISS index (built on first use: the flat one copies the embeddings)."""
        if self._index is None:
            self._index = self._build()
        return self._index

    def _resources(self):
        if self._gpu_res is None:
            self._gpu_res = faiss.StandardGpuResources()
        return self._gpu_res

    def _build(self):
        index = build_index(self.embeddings, self.kind, nlist=self.nlist, nprobe=self.nprobe)
        if self.use_gpu:
            index = faiss.index_cpu_to_gpu(self._resources(), 0, index)
        return index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k: (Q,k) similarities and (Q,k) detection rows (-1 = none)."""
        k = max(1, min(k, self.ntotal))
        return self.index.search(np.ascontiguousarray(queries, np.float32), k)

    def similarities(self, queries: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """(Q,D) queries -> (Q,R) float32 similarities to detections ``rows`` (all when None)."""
        queries = np.ascontiguousarray(queries, np.float32).reshape(-1, self.dim)
        if self.approximate:
            return self._ivf_similarities(queries, rows)
        base = self.embeddings if rows is None else self.embeddings[rows]
        return self._inner_products(queries, base)

    def _inner_products(self, queries: np.ndarray, base: np.ndarray) -> np.ndarray:
        """Exact (Q,R) inner products through FAISS's brute-force kernels."""
        if len(queries) == 0 or len(base) == 0:
            return np.zeros((len(queries), len(base)), np.float32)
        base = np.ascontiguousarray(base, np.float32)
        if self.use_gpu:
            return faiss.pairwise_distance_gpu(self._resources(), queries, base,
                                               metric=faiss.METRIC_INNER_PRODUCT)
        return faiss.pairwise_distances(queries, base, metric=faiss.METRIC_INNER_PRODUCT)

    def _ivf_similarities(self, queries: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        sims, ids = self.search(queries, self.ivf_k)
        full = np.full((len(queries), self.ntotal), -np.inf, np.float32)
        qi = np.repeat(np.arange(len(queries)), ids.shape[1]).reshape(ids.shape)
        ok = ids >= 0
        full[qi[ok], ids[ok]] = sims[ok]
        return full if rows is None else full[:, rows]
