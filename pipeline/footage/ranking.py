"""Ranking a gallery's detections for one query embedding, with filters."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pipeline.runtime.faiss_index import search_index
from pipeline.footage.store import Gallery, GalleryError, MissingItemError
from pipeline.arrays import l2_normalize

DEFAULT_TOP = 50


@dataclass(frozen=True)
class SearchFilter:
    """Which detections may be returned: on these cameras (all when empty), seen within
    [start, end] seconds (either end open when None; a time window drops still images,
    which have no time)."""

    cameras: tuple[str, ...] = ()
    start: float | None = None
    end: float | None = None

    def check(self, gallery: Gallery) -> None:
        unknown = [c for c in self.cameras if c not in gallery.cameras]
        if unknown:
            raise MissingItemError(f"no camera {unknown[0]!r} in gallery {gallery.directory}; its "
                               f"cameras: {', '.join(gallery.cameras) or 'none'}")
        if self.start is not None and self.end is not None and self.start > self.end:
            raise GalleryError(f"the time window starts at {self.start} s, after its end "
                               f"{self.end} s")

    @property
    def active(self) -> bool:
        return bool(self.cameras) or self.start is not None or self.end is not None


@dataclass(frozen=True)
class Hit:
    """One ranked detection. ``box`` is x1, y1, x2, y2 in the frame's pixels."""

    rank: int                  # 1 = best
    similarity: float
    source: str
    frame: int
    time: float | None
    camera: str
    box: list[float]
    id: int                    # detection id in the gallery (``search --hit ID``)
    score: float               # detection score
    frame_id: int              # frame row in the gallery

    def to_dict(self) -> dict:
        return asdict(self)


def allowed_frames(gallery: Gallery, filt: SearchFilter, exclude_frames=()) -> np.ndarray:
    """(F,) bool: frames a hit may come from."""
    filt.check(gallery)
    ok = np.ones(gallery.num_frames, bool)
    if filt.cameras:
        wanted = [gallery.cameras.index(c) for c in filt.cameras]
        ok &= np.isin(gallery.frame_camera_id, wanted)
    t = gallery.frame_time
    if filt.start is not None:
        ok &= ~np.isnan(t) & (t >= filt.start)
    if filt.end is not None:
        ok &= ~np.isnan(t) & (t <= filt.end)
    ok[np.asarray(list(exclude_frames), np.int64)] = False
    return ok


def find(gallery: Gallery, query: np.ndarray, top: int = DEFAULT_TOP,
         filt: SearchFilter = SearchFilter(), exclude_frames=()) -> list[Hit]:
    """The ``top`` detections most similar to ``query`` (a (D,) embedding), best first,
    among the frames the filter allows minus ``exclude_frames`` (the query's own frame)."""
    if top < 1:
        raise GalleryError(f"--top must be at least 1, got {top}")
    query = l2_normalize(np.asarray(query, np.float32).reshape(1, -1))[0]
    if query.shape[0] != gallery.embedding_dim:
        raise GalleryError(f"query embedding is {query.shape[0]}-d, the gallery's are "
                           f"{gallery.embedding_dim}-d")
    frames_ok = allowed_frames(gallery, filt, exclude_frames)
    allowed = None if frames_ok.all() else frames_ok[gallery.detection_frame]
    sims, ids = search_index(gallery.index(), query, top, allowed)
    return [hit_of(gallery, int(i), float(s), rank) for rank, (s, i) in
            enumerate(zip(sims, ids), start=1)]


def hit_of(gallery: Gallery, det: int, similarity: float, rank: int) -> Hit:
    f = int(gallery.detection_frame[det])
    return Hit(rank=rank, similarity=round(similarity, 6), source=gallery.frame_source[f],
               frame=int(gallery.frame_index[f]), time=gallery.frame_time_or_none(f),
               camera=gallery.frame_camera[f],
               box=[round(float(v), 2) for v in gallery.boxes[det]], id=det,
               score=round(float(gallery.scores[det]), 4), frame_id=f)
