"""Appearances: one row per track (one person's visit to one camera) with one embedding.

An appearance pools its detections' embeddings (:data:`POOLINGS`, measured in
``bench/bench_appearances.py``): ``score`` (default) weighs each detection by its detection
score, ``mean`` weighs them alike, ``best`` keeps the best-scoring detection's alone. Its best
detection (highest score) is the picture a page shows. Detections in no track (never confirmed
by the tracker) are in no appearance; ``search --by detection`` still finds them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.footage.store import Gallery
from pipeline.footage.tracks import link_tracks
from pipeline.arrays import l2_normalize

POOLINGS = ("score", "mean", "best")
DEFAULT_POOLING = "score"


@dataclass
class Appearances:
    """``track_of`` (T,) each detection's appearance (-1: none); per appearance (A rows):
    ``members`` its detection rows in time order, ``embeddings`` (A, D) unit norm, ``best``
    its best detection, ``camera`` its camera's position in ``gallery.cameras``, ``start`` /
    ``end`` seconds (NaN for still images)."""

    track_of: np.ndarray
    members: list[np.ndarray]
    embeddings: np.ndarray
    best: np.ndarray
    camera: np.ndarray
    start: np.ndarray
    end: np.ndarray

    def __len__(self) -> int:
        return len(self.members)


def pool(embeddings: np.ndarray, scores: np.ndarray, how: str = DEFAULT_POOLING) -> np.ndarray:
    """One unit-norm (D,) embedding from one track's (n, D) embeddings and (n,) scores."""
    if how not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {how!r}")
    if how == "best":
        return l2_normalize(embeddings[int(np.argmax(scores))][None])[0]
    weights = np.asarray(scores, np.float32) if how == "score" else np.ones(len(scores), np.float32)
    return l2_normalize((weights[:, None] * embeddings).sum(0, keepdims=True))[0]


def build_appearances(gallery: Gallery, embeddings: np.ndarray, track_of: np.ndarray | None = None,
                      how: str = DEFAULT_POOLING) -> Appearances:
    """The gallery's appearances from its (T, D) detection ``embeddings`` and its tracks
    (:func:`~pipeline.footage.tracks.link_tracks` when not given)."""
    track_of = link_tracks(gallery) if track_of is None else np.asarray(track_of, np.int64)
    count = int(track_of.max()) + 1 if len(track_of) else 0
    order = np.argsort(track_of, kind="stable")
    bounds = np.searchsorted(track_of[order], np.arange(count + 1))
    members = [order[bounds[a]:bounds[a + 1]] for a in range(count)]
    dim = embeddings.shape[1] if embeddings.ndim == 2 else gallery.embedding_dim
    pooled = np.zeros((count, dim), np.float32)
    best = np.zeros(count, np.int64)
    for a, rows in enumerate(members):
        pooled[a] = pool(embeddings[rows], gallery.scores[rows], how)
        best[a] = rows[int(np.argmax(gallery.scores[rows]))]
    frames = [gallery.detection_frame[rows] for rows in members]
    camera = np.array([gallery.frame_camera_id[f[0]] for f in frames], np.int64)
    start = np.array([np.min(gallery.frame_time[f]) for f in frames], np.float64)
    end = np.array([np.max(gallery.frame_time[f]) for f in frames], np.float64)
    return Appearances(track_of, members, pooled, best, camera, start, end)


def gallery_appearances(gallery: Gallery, how: str = DEFAULT_POOLING) -> Appearances:
    """Every appearance of ``gallery`` (its embeddings read from the segments)."""
    return build_appearances(gallery, gallery.embeddings(np.arange(gallery.num_detections)),
                             how=how)
