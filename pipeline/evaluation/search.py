"""The FAISS index over all gallery embeddings.

``flat`` (default, exact): ``IndexFlatIP`` (on the GPU when ``faiss.get_num_gpus() > 0``). Full
similarity rows — every detection of a query's gallery ranked, no top-k truncation — are
computed exactly with the same float32 inner products in query chunks (memory-bounded:
``chunk * ntotal * 4`` bytes), for all detections or for a query's subset only.
``ivf`` (approximate, flagged so): ``IndexIVFFlat``; detections the probed lists do not return
get similarity -inf (ranked last).
"""
from __future__ import annotations

import numpy as np

INDEX_KINDS = ("flat", "ivf")


class SimilarityIndex:
    """Inner-product index over (T,D) float32 gallery embeddings."""

    def __init__(self, embeddings: np.ndarray, kind: str = "flat", *, use_gpu: bool | None = None,
                 nlist: int | None = None, nprobe: int = 16, ivf_k: int = 2048):
        import faiss
        if kind not in INDEX_KINDS:
            raise ValueError(f"index kind must be one of {INDEX_KINDS}, got {kind!r}")
        self.embeddings = np.ascontiguousarray(embeddings, np.float32)
        self.kind, self.ivf_k = kind, ivf_k
        self.approximate = kind == "ivf"
        n, d = self.embeddings.shape
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        else:
            nlist = nlist or max(1, int(np.sqrt(max(n, 1))))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(self.embeddings)
            index.nprobe = nprobe
        if use_gpu is None:
            use_gpu = faiss.get_num_gpus() > 0 if hasattr(faiss, "get_num_gpus") else False
        if use_gpu:
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        if n:
            index.add(self.embeddings)
        self.index = index

    @property
    def ntotal(self) -> int:
        return len(self.embeddings)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (Q,k) similarities and detection indices (-1 = none)."""
        k = max(1, min(k, self.ntotal))
        return self.index.search(np.ascontiguousarray(queries, np.float32), k)

    def similarities(self, queries: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """(Q,D) queries -> (Q,R) similarities to detections ``rows`` (all when None)."""
        queries = np.ascontiguousarray(queries, np.float32)
        if self.approximate:
            return self._ivf_similarities(queries, rows)
        base = self.embeddings if rows is None else self.embeddings[rows]
        return queries @ base.T

    def _ivf_similarities(self, queries: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        sims, ids = self.search(queries, self.ivf_k)
        full = np.full((len(queries), self.ntotal), -np.inf, np.float32)
        qi = np.repeat(np.arange(len(queries)), ids.shape[1]).reshape(ids.shape)
        ok = ids >= 0
        full[qi[ok], ids[ok]] = sims[ok]
        return full if rows is None else full[:, rows]
