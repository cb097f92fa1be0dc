"""`search`: a query (an image and a box, a crop of the person, or an earlier hit) -> ranked
detections of a gallery, written as results.json / .csv / .html.

A query picture is embedded by a :class:`pipeline.footage.query_model.QueryEmbedder` (the
gallery's own model); a hit's embedding is read from the gallery, so searching from a hit
needs neither the model nor torch. The query's own frame is left out of the results when it
is in the gallery: the person cannot appear twice in one frame.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from typing import Callable

import numpy as np
from PIL import Image

from pipeline.data.image_files import read_rgb
from pipeline.data.records import DatasetError
from pipeline.errors import UserError
from pipeline.data.synthetic.video import box_iou_one
from pipeline.footage.appearances import (DEFAULT_RANKING, AppearanceHit, Appearances,
                                          find_appearances, gallery_appearances)
from pipeline.footage.ranking import DEFAULT_TOP, Hit, SearchFilter, find
from pipeline.footage.pictures import crop, detection_crop, jpeg_bytes, side_by_side
from pipeline.footage.report import write_results
from pipeline.footage.rerank import multi_query
from pipeline.runtime.calibration import read_calibration
from pipeline.footage.store import Gallery, MissingItemError, open_gallery

MAX_IMAGE_PIXELS = 50_000_000     # an upload larger than this is refused, not decoded


class QueryError(UserError, ValueError):
    """The query is unusable: unreadable picture, malformed box, box outside the image."""


@dataclass
class Query:
    kind: str                        # "image" (image + box), "crop" (whole picture), "hit"
    embedding: np.ndarray            # (D,)
    crop_jpeg: bytes                 # what the person looks like, for pages
    box: list[float]                 # in the query picture's pixels
    image: str | None = None         # query image path (None for uploads and hits)
    hit: int | None = None
    exclude_frames: tuple[int, ...] = ()
    extra: dict = field(default_factory=dict)
    parts: tuple["Query", ...] = ()  # a "multi" query: the queries it averages

    def to_dict(self) -> dict:
        if self.parts:
            return {"kind": self.kind, "parts": [p.to_dict() for p in self.parts]}
        frame = self.exclude_frames[0] if self.exclude_frames else None
        return {"kind": self.kind, "image": self.image, "box": self.box, "hit": self.hit,
                "frame_id": frame, **self.extra}


def combine_queries(queries: list[Query]) -> Query:
    """Several queries of one person ("these crops are the same person") -> one "multi"
    query: their embeddings averaged (:func:`~pipeline.footage.rerank.multi_query`), every
    query's frame left out of the results."""
    if len(queries) == 1:
        return queries[0]
    frames = tuple(sorted({f for q in queries for f in q.exclude_frames}))
    return Query("multi", multi_query(np.stack([q.embedding for q in queries])),
                 side_by_side([q.crop_jpeg for q in queries]), [], exclude_frames=frames,
                 parts=tuple(queries))


def parse_box(text: str) -> list[float]:
    """"x1,y1,x2,y2" -> four floats; QueryError when malformed."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        box = [float(p) for p in parts]
    except ValueError:
        box = []
    if len(box) != 4 or not all(np.isfinite(box)):
        raise QueryError(f"a box is x1,y1,x2,y2 (four numbers, pixels), got {text!r}")
    return box


def check_box(box, width: int, height: int) -> None:
    x1, y1, x2, y2 = box
    if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
        raise QueryError(f"box {','.join(f'{v:g}' for v in box)} is not inside the "
                         f"{width}x{height} image (need 0 <= x1 < x2 <= {width}, "
                         f"0 <= y1 < y2 <= {height})")


def read_picture(data: bytes | str | Path, name: str = "query picture") -> np.ndarray:
    """(H, W, 3) uint8 RGB from a file path or raw bytes, read as every frame is
    (:func:`pipeline.data.image_files.read_rgb`); QueryError when unreadable."""
    try:
        return read_rgb(data, name, MAX_IMAGE_PIXELS)
    except DatasetError as e:
        raise QueryError(str(e)) from None


def query_from_picture(embedder, rgb: np.ndarray, box=None, image_path: str | None = None) -> Query:
    """A query from a picture and a box in it; no box = the picture is the person's crop.
    ``embedder``: a QueryEmbedder (``.gallery``, ``.embed(rgb, box)``)."""
    height, width = rgb.shape[:2]
    kind = "image" if box is not None else "crop"
    box = [0.0, 0.0, float(width), float(height)] if box is None else [float(v) for v in box]
    check_box(box, width, height)
    exclude = ()
    if image_path is not None:
        frame = embedder.gallery.find_frame(os.path.abspath(image_path), 0)
        exclude = () if frame is None else (frame,)
    return Query(kind, embedder.embed(rgb, box), jpeg_bytes(crop(Image.fromarray(rgb), box)),
                 box, image=image_path, exclude_frames=exclude)


def query_from_hit(gallery: Gallery, hit: int) -> Query:
    """A query from a stored detection ("search again from this match")."""
    if not 0 <= hit < gallery.num_detections:
        raise MissingItemError(f"no detection {hit} in gallery {gallery.directory} (ids 0.."
                         f"{gallery.num_detections - 1})")
    frame = int(gallery.detection_frame[hit])
    extra = {"source": gallery.frame_source[frame], "frame": int(gallery.frame_index[frame]),
             "time": gallery.frame_time_or_none(frame), "camera": gallery.frame_camera[frame]}
    return Query("hit", gallery.embeddings([hit])[0], detection_crop(gallery, hit),
                 [round(float(v), 2) for v in gallery.boxes[hit]], hit=hit, exclude_frames=(frame,),
                 extra=extra)


def run_query(gallery: Gallery, query: Query, top: int = DEFAULT_TOP,
              filt: SearchFilter = SearchFilter()) -> list[Hit]:
    return find(gallery, query.embedding, top, filt, query.exclude_frames)


SEARCH_BY = ("appearance", "detection")
OWN_APPEARANCE_IOU = 0.5       # a gallery-frame query's box is the detection it covers this well


def own_appearances(gallery: Gallery, apps: Appearances, query: Query) -> tuple[int, ...]:
    """The appearance(s) the query itself belongs to: its hit's track, or the track of the
    detection its box covers in a gallery frame (a multi query: those of its parts)."""
    if query.parts:
        return tuple(sorted({a for q in query.parts for a in own_appearances(gallery, apps, q)}))
    if query.hit is not None:
        rows = [query.hit]
    elif query.exclude_frames:
        rows = [r for r in gallery.detections_of(query.exclude_frames[0])
                if box_iou_one(gallery.boxes[r], np.asarray([query.box], np.float32))[0]
                >= OWN_APPEARANCE_IOU]
    else:
        rows = []
    return tuple(sorted({int(apps.track_of[r]) for r in rows if apps.track_of[r] >= 0}))


def other_cameras_filter(gallery: Gallery, query: Query, filt: SearchFilter) -> SearchFilter:
    """``filt`` narrowed to the cameras other than the query's."""
    if not query.exclude_frames:
        raise QueryError("--other-cameras needs a query from the gallery (--hit, or --query "
                         "with one of the gallery's frames): a picture from elsewhere has no "
                         "camera")
    own = {gallery.frame_camera[f] for f in query.exclude_frames}
    cameras = tuple(c for c in (filt.cameras or gallery.cameras) if c not in own)
    if not cameras:
        raise QueryError(f"--other-cameras leaves no camera: the query is on "
                         f"{', '.join(sorted(own))}")
    return replace(filt, cameras=cameras)


def run_appearance_query(gallery: Gallery, query: Query, top: int = DEFAULT_TOP,
                         filt: SearchFilter = SearchFilter(),
                         ranking: str = DEFAULT_RANKING) -> list[AppearanceHit]:
    apps = gallery_appearances(gallery)
    return find_appearances(gallery, apps, query.embedding, top, filt,
                            own_appearances(gallery, apps, query), ranking)


def _as_tuple(value) -> tuple:
    return () if value is None else (value,) if isinstance(value, (int, str)) else tuple(value)


def build_query(gallery: Gallery, embedder, image: str | None, boxes: tuple[str, ...],
                hits: tuple[int, ...]) -> Query:
    """The query of ``search``: one or more hits, or one image with no box (a crop), one box
    or several boxes (several crops of one person: a multi query)."""
    if bool(image) == bool(hits):
        raise QueryError("give exactly one of --query IMAGE and --hit ID (--hit may repeat)")
    if hits and boxes:
        raise QueryError("--box goes with --query, not with --hit")
    if hits:
        if embedder is not None:   # a model was named: it must be the gallery's
            embedder.check()
        return combine_queries([query_from_hit(gallery, h) for h in dict.fromkeys(hits)])
    rgb = read_picture(image, image)
    return combine_queries([query_from_picture(embedder, rgb, None if b is None else parse_box(b),
                                               image_path=image) for b in (boxes or (None,))])


def search_command(gallery_dir, out_dir, *, image: str | None = None, box=None, hit=None,
                   top: int = DEFAULT_TOP, filt: SearchFilter = SearchFilter(),
                   by: str = "appearance", other_cameras: bool = False,
                   ranking: str = DEFAULT_RANKING, model: str | None = None,
                   embedder_for: Callable[[Gallery], object] | None = None) -> tuple[dict, Path]:
    """What ``cli.py search`` does; returns (results payload, results.html path). ``box``: a
    box or several (a multi query from one image); ``hit``: an id or several.
    ``embedder_for(gallery)`` makes the QueryEmbedder a query picture needs; given with a hit,
    its model is only checked against the gallery's. ``by="appearance"`` also ranks the
    gallery's appearances (results.json ``appearances``); ``other_cameras`` keeps only cameras
    other than the query's. ``model``: the gallery's model file when not at its recorded path
    (where its calibration is looked for)."""
    if by not in SEARCH_BY:
        raise QueryError(f"--by must be one of {', '.join(SEARCH_BY)}, got {by!r}")
    gallery = open_gallery(gallery_dir)
    filt.check(gallery)
    embedder = embedder_for(gallery) if embedder_for is not None else None
    query = build_query(gallery, embedder, image, _as_tuple(box), _as_tuple(hit))
    if other_cameras:
        filt = other_cameras_filter(gallery, query, filt)
    hits = run_query(gallery, query, top, filt)
    appearances = (run_appearance_query(gallery, query, top, filt, ranking)
                   if by == "appearance" else None)
    calibration, note = read_calibration(gallery.model, model)
    payload = write_results(out_dir, gallery, query.to_dict(), query.crop_jpeg, hits, filt,
                            appearances, calibration, note)
    return payload, Path(out_dir) / "results.html"
