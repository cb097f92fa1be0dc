"""Who is in each query's gallery, and which gallery box is the query person's (protocols.md).

A :class:`QueryProtocol` per query, in one of two forms:
- subset (CUHK-SYSU): ``gallery`` (G,) indices into ``data.gallery`` in protocol order;
- masked (PRW): every gallery image except ``excluded`` ones (the query frame, and with
  multi-view the query camera's frames), in ``data.gallery`` order; ``gallery`` is None.
``positives`` (P,) gallery-image indices containing the query person, ``gt_boxes`` (P,4) float
x1,y1,x2,y2 their box of that person, whole pixels as the published numbers read them unless
``boxes="exact"`` (:mod:`pipeline.data.published_boxes`); ``count_gt`` = P. ``listed``: how
many leading gallery images the protocol file lists (CUHK-SYSU's whole pool: the TestG50 list
before the rest of the pool; CBGM re-scores only those, as SeqNet does), None = all.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.data.cuhk_sysu import GALLERY_SIZES, LABELING_GALLERY
from pipeline.data.published_boxes import PUBLISHED, choose
from pipeline.data.records import FULL_GALLERY, PersonSearchData
from pipeline.errors import UserError

CUHK_GALLERY_SIZES = (*GALLERY_SIZES, FULL_GALLERY)
DEFAULT_GALLERY_SIZE = {"cuhk-sysu": 100, "prw": FULL_GALLERY}


class ProtocolError(UserError, ValueError):
    """The requested protocol does not exist for this dataset."""


@dataclass(frozen=True)
class QueryProtocol:
    positives: np.ndarray            # (P,) int64 gallery image indices with the query person
    gt_boxes: np.ndarray             # (P,4) float64 the person's box in each of them
    gallery: np.ndarray | None       # (G,) int64 explicit gallery (subset form) or None
    excluded: np.ndarray | None      # masked form: (E,) int64 gallery images left out
    listed: int | None = None        # CBGM candidates: the first ``listed`` gallery images

    @property
    def count_gt(self) -> int:
        return len(self.positives)


def build_protocol(data: PersonSearchData, gallery_size: int | None = None,
                   multi_view: bool = False, boxes: str = PUBLISHED) -> list[QueryProtocol]:
    """One QueryProtocol per query of ``data`` (in query order); ``boxes``: "published" or
    "exact" ground-truth boxes."""
    if data.dataset == "prw":
        if gallery_size not in (None, FULL_GALLERY):
            raise ProtocolError(f"PRW has only the full gallery ({FULL_GALLERY}), not "
                                f"{gallery_size}")
        return prw_protocol(data, multi_view, boxes)
    if data.dataset == "cuhk-sysu":
        if multi_view:
            raise ProtocolError("the multi-view variant exists only for PRW")
        return cuhk_protocol(data, DEFAULT_GALLERY_SIZE["cuhk-sysu"]
                             if gallery_size is None else gallery_size, boxes)
    raise ProtocolError(f"unknown dataset {data.dataset!r}")


def prw_protocol(data: PersonSearchData, multi_view: bool,
                 boxes: str = PUBLISHED) -> list[QueryProtocol]:
    """Gallery = all test frames but the query frame (multi-view: other cameras only)."""
    index = {r.name: i for i, r in enumerate(data.gallery)}
    cams = np.array([-1 if r.camera is None else r.camera for r in data.gallery])
    box_of: dict[int, list] = {}       # pid -> [(frame, its box of that person), ...]
    for i, r in enumerate(data.gallery):
        gt = choose(r.boxes, r.published_boxes, data.dataset, boxes)
        for pid in np.unique(r.pids):
            box_of.setdefault(int(pid), []).append((i, gt[np.argmax(r.pids == pid)]))
    out = []
    for q in data.queries:
        qi = index.get(q.image, -1)
        excluded = [qi] if qi >= 0 else []
        if multi_view:
            excluded = sorted(set(excluded) | set(np.nonzero(cams == q.camera)[0].tolist()))
        left_out = set(excluded)
        found = [(i, box) for i, box in box_of.get(int(q.pid), []) if i not in left_out]
        out.append(QueryProtocol(np.array([i for i, _ in found], np.int64),
                                 np.array([b for _, b in found], np.float64).reshape(-1, 4),
                                 None, np.array(excluded, np.int64)))
    return out


def cuhk_protocol(data: PersonSearchData, gallery_size: int,
                  boxes: str = PUBLISHED) -> list[QueryProtocol]:
    """TestG{N} galleries; N = -1: the TestG50 list then all other pool images but the query's."""
    if gallery_size not in CUHK_GALLERY_SIZES:
        raise ProtocolError(f"CUHK-SYSU gallery size must be one of {CUHK_GALLERY_SIZES}")
    source = LABELING_GALLERY if gallery_size == FULL_GALLERY else gallery_size
    if source not in data.query_galleries:
        raise ProtocolError(f"no TestG{source} protocol galleries in {data.root} "
                            f"(have {sorted(data.query_galleries)})")
    galleries = data.query_galleries[source]
    if len(galleries) != len(data.queries):
        raise ProtocolError(f"TestG{source} has {len(galleries)} galleries for "
                            f"{len(data.queries)} queries")
    index = {r.name: i for i, r in enumerate(data.gallery)}
    out = []
    for q, g in zip(data.queries, galleries):
        missing = [n for n in g.images if n not in index]
        if missing:
            raise ProtocolError(f"TestG{source} gallery image {missing[0]!r} is not in the pool")
        gal = np.array([index[n] for n in g.images], np.int64)
        gt = choose(g.boxes, g.published_boxes, data.dataset, boxes)
        present = ~np.isnan(gt).any(axis=1)
        listed = None
        if gallery_size == FULL_GALLERY:  # then every other pool image, in pool order
            rest = np.ones(len(data.gallery), bool)
            rest[gal] = False
            if q.image in index:
                rest[index[q.image]] = False
            listed = len(gal)
            gal = np.r_[gal, np.nonzero(rest)[0]].astype(np.int64)
        out.append(QueryProtocol(gal[:len(gt)][present], gt[present], gal, None, listed))
    return out


def gallery_images(p: QueryProtocol, num_images: int) -> np.ndarray:
    """(G,) the query's gallery image indices in ranking order (both forms)."""
    if p.gallery is not None:
        return p.gallery
    mask = np.ones(num_images, bool)
    mask[p.excluded] = False
    return np.nonzero(mask)[0]
