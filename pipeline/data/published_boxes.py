"""Annotation boxes the way the published PRW / CUHK-SYSU numbers read them: whole pixels.

The public evaluation code behind the published tables (SeqNet's dataset readers and
``eval_func``, which COAT and most later work reuse) casts every annotation box to 32-bit integers as it loads it (truncation
toward zero). Scored against float boxes, a release whose boxes are not whole pixels gives
another mAP. The readers therefore keep the released float boxes (``boxes``) and, beside them,
these truncated ones (``published_boxes``), made from the very float64 numbers the files hold,
so that a sum such as 10.3 + 20.7 = 30.999999999999996 truncates to 30 exactly as there:

- PRW frames (annotations/*.mat): x, y clipped at 0; x2 = x + w, y2 = y + h; all four truncated.
- PRW queries (query_info.txt): x2 = x + w, y2 = y + h from the unclipped x, y; all four
  truncated; then clipped at 0.
- CUHK-SYSU (Images.mat, TestG*.mat query and gallery boxes): x, y, w, h truncated first,
  then x2 = x + w, y2 = y + h.

The evaluator's adaptive IoU threshold takes w, h from the truncated box, as that code does.
Records built in memory (tests, generated worlds) carry no truncated boxes; :func:`from_corners`
derives them from the float corners with the same rules.
"""
from __future__ import annotations

import numpy as np

EXACT, PUBLISHED = "exact", "published"


def _truncate(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, np.float64).astype(np.int32).astype(np.float32)


def prw_frame_boxes(xywh: np.ndarray) -> np.ndarray:
    """(N,4) PRW frame rows [x, y, w, h] (float64, as read) -> (N,4) whole-pixel x1,y1,x2,y2."""
    b = np.asarray(xywh, np.float64).reshape(-1, 4).clip(min=0)
    return _truncate(np.hstack([b[:, :2], b[:, :2] + b[:, 2:]]))


def prw_query_box(xywh: np.ndarray) -> np.ndarray:
    """One query_info.txt box [x, y, w, h] -> (4,) whole-pixel x1,y1,x2,y2."""
    x, y, w, h = np.asarray(xywh, np.float64).reshape(4)
    return _truncate([x, y, x + w, y + h]).clip(min=0)


def cuhk_boxes(xywh: np.ndarray) -> np.ndarray:
    """(N,4) CUHK-SYSU [x, y, w, h] (float64, as read; NaN rows stay NaN) -> x1,y1,x2,y2."""
    b = np.asarray(xywh, np.float64).reshape(-1, 4)
    missing = np.isnan(b).any(axis=1)
    t = np.where(missing[:, None], 0, b).astype(np.int32)
    out = np.hstack([t[:, :2], t[:, :2] + t[:, 2:]]).astype(np.float32)
    out[missing] = np.nan
    return out


def from_corners(boxes: np.ndarray, dataset: str) -> np.ndarray:
    """Whole-pixel boxes from float x1,y1,x2,y2 corners when the records carry none."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    xywh = np.hstack([b[:, :2], b[:, 2:] - b[:, :2]])
    return cuhk_boxes(xywh) if dataset == "cuhk-sysu" else prw_frame_boxes(xywh)


def choose(boxes: np.ndarray, published: np.ndarray | None, dataset: str,
           convention: str) -> np.ndarray:
    """The boxes of one record under ``convention`` ("published" or "exact"), float64 (N,4)."""
    if convention == EXACT:
        return np.asarray(boxes, np.float64).reshape(-1, 4)
    if convention != PUBLISHED:
        raise ValueError(f"box convention must be {PUBLISHED!r} or {EXACT!r}, not {convention!r}")
    if published is None:
        published = from_corners(boxes, dataset)
    return np.asarray(published, np.float64).reshape(-1, 4)
