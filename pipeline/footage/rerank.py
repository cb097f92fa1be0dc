"""Re-ranking a query against a (small) set of candidate embeddings, in NumPy.

- :func:`multi_query`: several crops of one person -> one query (their normalised mean).
- :func:`expand_query`: average query expansion: the query plus its ``k`` most similar
  candidates above ``min_similarity``, renormalised (the confident neighbours are probably
  the same person seen another way).
- :func:`k_reciprocal_rerank`: Zhong et al., CVPR 2017: candidates that are among the
  query's k1 nearest and have the query among theirs are the reliable ones; the final
  distance mixes the Jaccard distance of those neighbour sets with the original distance.
All embeddings are unit norm; similarities are inner products.
"""
from __future__ import annotations

import numpy as np

from pipeline.arrays import l2_normalize

QE_K = 2
QE_MIN_SIMILARITY = 0.5
K1, K2, LAMBDA = 6, 3, 0.3     # smaller than the paper's 20/6: an appearance gallery is short


def multi_query(embeddings: np.ndarray) -> np.ndarray:
    """(n, D) embeddings of one person -> one unit-norm (D,) query."""
    return l2_normalize(l2_normalize(np.asarray(embeddings, np.float32)).mean(0, keepdims=True))[0]


def expand_query(query: np.ndarray, candidates: np.ndarray, k: int = QE_K,
                 min_similarity: float = QE_MIN_SIMILARITY) -> np.ndarray:
    """The query averaged with its ``k`` best candidates whose similarity >= ``min_similarity``."""
    sims = candidates @ query
    top = np.argsort(-sims, kind="stable")[:k]
    top = top[sims[top] >= min_similarity]
    return l2_normalize((query + candidates[top].sum(0))[None])[0]


def k_reciprocal_rerank(query: np.ndarray, candidates: np.ndarray, k1: int = K1, k2: int = K2,
                        lam: float = LAMBDA) -> np.ndarray:
    """(N,) re-ranked scores (higher = better; comparable only within this query) of the
    candidates for ``query``."""
    n = len(candidates)
    if n == 0:
        return np.zeros(0, np.float32)
    feats = np.vstack([query[None], candidates]).astype(np.float32)
    dist = np.clip(2.0 - 2.0 * feats @ feats.T, 0.0, None)        # squared euclidean
    dist = dist / np.maximum(dist.max(axis=0, keepdims=True), 1e-12)
    rank = np.argsort(dist, axis=1, kind="stable")
    weights = np.zeros_like(dist)
    for i in range(n + 1):
        reliable = _expanded_reciprocal(rank, i, min(k1, n))
        w = np.exp(-dist[i, reliable])
        weights[i, reliable] = w / w.sum()
    if k2 > 1:   # local query expansion over the k2 nearest
        weights = np.stack([weights[rank[i, :k2]].mean(0) for i in range(n + 1)])
    inter = np.minimum(weights[0][None], weights[1:]).sum(1)
    union = np.maximum(weights[0][None], weights[1:]).sum(1)
    jaccard = 1.0 - inter / np.maximum(union, 1e-12)
    return -(lam * dist[0, 1:] + (1.0 - lam) * jaccard)


def _expanded_reciprocal(rank: np.ndarray, i: int, k1: int) -> np.ndarray:
    """The k1-reciprocal neighbours of ``i``, grown by those of its reliable neighbours."""
    def reciprocal(j: int, k: int) -> np.ndarray:
        forward = rank[j, :k + 1]
        back = rank[forward, :k + 1]
        return forward[np.any(back == j, axis=1)]
    reliable = reciprocal(i, k1)
    grown = reliable
    for j in reliable:
        candidate = reciprocal(int(j), max(1, int(round(k1 / 2))))
        if len(np.intersect1d(candidate, reliable)) > 2 / 3 * len(candidate):
            grown = np.union1d(grown, candidate)
    return np.unique(grown)
