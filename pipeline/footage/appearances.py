"""Appearances: one row per track (one person's visit to one camera) with one embedding.

An appearance pools its detections' embeddings (:data:`POOLINGS`, measured in
``bench/bench_appearances.py``): ``score`` (default) weighs each detection by its detection
score, ``mean`` weighs them alike, ``best`` keeps the best-scoring detection's alone. Its best
detection (highest score) is the picture a page shows. Detections in no track (never confirmed
by the tracker) are in no appearance; ``search --by detection`` still finds them.

A gallery stores its appearances (each commit links and pools them,
:mod:`pipeline.footage.track_store`) with a FAISS index over them: a search reads them
(:func:`gallery_appearances`) and links nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.arrays import l2_normalize
from pipeline.footage.ranking import DEFAULT_TOP, SearchFilter, allowed_frames
from pipeline.footage.rerank import expand_query, k_reciprocal_rerank
from pipeline.footage.store import Gallery, GalleryError, read_track_index, read_track_table
from pipeline.runtime.faiss_index import search_index
from pipeline.footage.tracks import link_tracks

POOLINGS = ("score", "mean", "best")
DEFAULT_POOLING = "score"


@dataclass
class Appearances:
    """``track_of`` (T,) each detection's appearance (-1: none); per appearance (A rows):
    ``members`` its detection rows in time order, ``embeddings`` (A, D) unit norm, ``best``
    its best detection, ``camera`` its camera's position in ``gallery.cameras``, ``start`` /
    ``end`` seconds (NaN for still images); ``index`` the gallery's FAISS index over
    ``embeddings`` when they are the stored ones (None: rank them exhaustively)."""

    track_of: np.ndarray
    members: list[np.ndarray]
    embeddings: np.ndarray
    best: np.ndarray
    camera: np.ndarray
    start: np.ndarray
    end: np.ndarray
    index: object = None

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
    track_of = (link_tracks(gallery, embeddings) if track_of is None
                else np.asarray(track_of, np.int64))
    members = members_of(track_of, int(track_of.max()) + 1 if len(track_of) else 0)
    count = len(members)
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


def members_of(track_of: np.ndarray, count: int) -> list[np.ndarray]:
    """Each of the ``count`` tracks' detection rows, in row (time) order."""
    order = np.argsort(track_of, kind="stable")
    bounds = np.searchsorted(track_of[order], np.arange(count + 1))
    return [order[bounds[a]:bounds[a + 1]] for a in range(count)]


class NoTracksError(GalleryError):
    """The gallery was made before galleries stored tracks."""


def gallery_appearances(gallery: Gallery) -> Appearances:
    """Every appearance ``gallery`` stores, with its FAISS index."""
    entry = gallery.manifest.tracks
    if entry is None:
        raise NoTracksError(f"gallery {gallery.directory} was made by an older version and has "
                            f"no tracks: run `python cli.py gallery upgrade {gallery.directory}` "
                            "(it links them from the stored detections, without the model)")
    table = read_track_table(gallery.directory, entry)
    camera = {c: i for i, c in enumerate(gallery.cameras)}
    return Appearances(table.track_of, members_of(table.track_of, len(table)),
                       table.embeddings, table.best,
                       np.array([camera[c] for c in table.camera], np.int64), table.start,
                       table.end, read_track_index(gallery.directory, entry))


# ------------------------------------------------------------------------------ search

RANKINGS = ("plain", "expand", "k-reciprocal")
DEFAULT_RANKING = "plain"      # bench/bench_appearances.py: neither option helps on the demo's footage


@dataclass(frozen=True)
class AppearanceHit:
    """One ranked appearance; ``best`` is its best detection (``hit`` = its id for
    ``search --hit``; ``box`` x1, y1, x2, y2 frame pixels)."""

    rank: int
    similarity: float
    camera: str
    source: str
    start: float | None            # seconds; None for still images
    end: float | None
    frames: int
    best: dict
    members: list[int]             # the appearance's detection ids, in time order

    def to_dict(self) -> dict:
        return {"rank": self.rank, "similarity": self.similarity, "camera": self.camera,
                "source": self.source, "start": self.start, "end": self.end,
                "frames": self.frames, "best": self.best}


def ranking_scores(query: np.ndarray, candidates: np.ndarray, ranking: str) -> np.ndarray:
    if ranking not in RANKINGS:
        raise GalleryError(f"ranking must be one of {', '.join(RANKINGS)}, got {ranking!r}")
    if ranking == "expand":
        return candidates @ expand_query(query, candidates)
    if ranking == "k-reciprocal":
        return k_reciprocal_rerank(query, candidates)
    return candidates @ query


def find_appearances(gallery: Gallery, apps: Appearances, query: np.ndarray,
                     top: int = DEFAULT_TOP, filt: SearchFilter = SearchFilter(),
                     exclude: tuple[int, ...] = (), ranking: str = DEFAULT_RANKING
                     ) -> list[AppearanceHit]:
    """The ``top`` appearances most like ``query`` among those with a frame the filter allows,
    minus the ``exclude`` appearances (the query's own), best first. ``similarity`` is the
    inner product with the pooled embedding (the ranking option may reorder them)."""
    query = l2_normalize(np.asarray(query, np.float32).reshape(1, -1))[0]
    frames_ok = allowed_frames(gallery, filt)
    ok = np.array([frames_ok[gallery.detection_frame[m]].any() for m in apps.members], bool)
    ok[np.asarray(list(exclude), np.int64)] = False
    if ranking == "plain" and apps.index is not None:
        order = search_index(apps.index, query, top, ok)[1]
    else:
        candidates = np.flatnonzero(ok)
        scores = ranking_scores(query, apps.embeddings[candidates], ranking)
        order = candidates[np.argsort(-scores, kind="stable")][:top]
    return [_appearance_hit(gallery, apps, int(a), float(apps.embeddings[a] @ query), rank)
            for rank, a in enumerate(order, start=1)]


def _appearance_hit(gallery: Gallery, apps: Appearances, a: int, similarity: float,
                    rank: int) -> AppearanceHit:
    best = int(apps.best[a])
    f = int(gallery.detection_frame[best])
    rows = apps.members[a]
    start, end = float(apps.start[a]), float(apps.end[a])
    return AppearanceHit(
        rank=rank, similarity=round(similarity, 6), camera=gallery.cameras[int(apps.camera[a])],
        source=gallery.frame_source[f], start=None if np.isnan(start) else start,
        end=None if np.isnan(end) else end, frames=len(rows),
        best={"hit": best, "frame": int(gallery.frame_index[f]),
              "time": gallery.frame_time_or_none(f),
              "box": [round(float(v), 2) for v in gallery.boxes[best]]},
        members=[int(r) for r in rows])
