"""The FAISS index over all gallery embeddings.

``flat`` (default, exact): a ``faiss.IndexFlatIP`` over every kept gallery embedding (on the
GPU when ``faiss.get_num_gpus() > 0``). Evaluation needs every detection of a query's gallery
ranked (no top-k truncation: a shorter list changes AP), so full similarity rows are computed
with FAISS's exact brute-force inner products (``faiss.pairwise_distances`` on the CPU,
``faiss.pairwise_distance_gpu`` on the GPU), one query chunk at a time by the caller
(memory ``chunk * rows * 4`` bytes), for all detections or for a query's subset only. The
flat index itself serves top-k look-ups (:meth:`SimilarityIndex.search`).
``ivf`` (approximate, flagged so): ``IndexIVFFlat``; detections the probed lists do not return
among the ``ivf_k`` best get similarity -inf (ranked last).
"""
from __future__ import annotations

import faiss
import numpy as np

INDEX_KINDS = ("flat", "ivf")
DEFAULT_NPROBE = 16
DEFAULT_IVF_K = 2048


def gpu_available() -> bool:
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


class SimilarityIndex:
    """Inner-product index over (T,D) float32 L2-normalised gallery embeddings."""

    def __init__(self, embeddings: np.ndarray, kind: str = "flat", *, use_gpu: bool | None = None,
                 nlist: int | None = None, nprobe: int = 16, ivf_k: int = 2048):
        if kind not in INDEX_KINDS:
            raise ValueError(f"index kind must be one of {INDEX_KINDS}, got {kind!r}")
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
        d = self.dim
        if self.kind == "flat":
            index = faiss.IndexFlatIP(d)
        else:
            nlist = self.nlist or max(1, int(np.sqrt(max(self.ntotal, 1))))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(self.embeddings)
            index.nprobe = self.nprobe
        if self.use_gpu:
            index = faiss.index_cpu_to_gpu(self._resources(), 0, index)
        if self.ntotal:
            index.add(self.embeddings)
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
