"""Scoring a footage gallery against synthetic ground truth: how often is the top hit the
query's identity?

Queries are the gallery's own detections of annotated walkers: every detection whose box
covers a walker (IoU >= ``min_iou``) asks "where else does this person appear?" as
``search --hit`` does (its own frame left out). The top hit is right when it covers the same
walker. ``cross_camera`` leaves the query's own camera out as well, so a hit one second
later on the same camera does not count: the harder question, close to PRW's multi-view
setting.

Tracks and appearances (:mod:`pipeline.footage.appearances`) are scored as a tracking problem
by py-motmetrics (IDF1, ID switches, MOTA per camera, over the indexed frames; passers-by, who
share one label, are left out of truth and hypotheses) and as a retrieval problem: a true
appearance is one walker's visit to one camera, an appearance is labelled by the walker most
of its detections cover, and a query (a walker's detection, or its track's pooled embedding)
asks for the walker's appearances on the OTHER cameras: top-1 (is the best one the walker's?)
and mAP (each visit counts once, at the rank of its first appearance; further appearances of
a visit already found are skipped; the relevant count is the visits the gallery detected).
Those count only queries whose walker has an appearance on another camera, so they move with
the tracks; ``all_top1`` asks every query the detection-level score asks (a walker detected on
another camera) and counts one with no appearance of the walker there as a miss.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np

from pipeline.data.records import UNLABELED
from pipeline.data.synthetic.video import box_iou_one
from pipeline.footage.appearances import Appearances
from pipeline.footage.ranking import SearchFilter, find
from pipeline.footage.store import Gallery

MIN_IOU = 0.5


@dataclass
class FootageScore:
    queries: int
    top1: float                   # fraction of queries whose top hit is the same walker
    cross_camera_queries: int
    cross_camera_top1: float


def walker_detections(gallery: Gallery, truth, min_iou: float = MIN_IOU) -> dict[int, int]:
    """Detection id -> walker pid, for detections that cover an annotated walker."""
    found = {}
    for det in range(gallery.num_detections):
        f = int(gallery.detection_frame[det])
        pid = truth.identity(gallery.frame_source[f], int(gallery.frame_index[f]),
                             gallery.boxes[det], min_iou)
        if pid is not None and pid != UNLABELED:
            found[det] = pid
    return found


def score_footage(gallery: Gallery, truth, min_iou: float = MIN_IOU) -> FootageScore:
    labels = walker_detections(gallery, truth, min_iou)
    same, cross, cross_n = [], [], 0
    cameras = gallery.cameras
    for det, pid in labels.items():
        frame = int(gallery.detection_frame[det])
        query = gallery.embeddings([det])[0]
        top = find(gallery, query, 1, exclude_frames=(frame,))
        same.append(bool(top) and labels.get(top[0].id) == pid)
        others = tuple(c for c in cameras if c != gallery.frame_camera[frame])
        if others and _seen_on(labels, gallery, pid, others):
            cross_n += 1
            top = find(gallery, query, 1, SearchFilter(others), exclude_frames=(frame,))
            cross.append(bool(top) and labels.get(top[0].id) == pid)
    return FootageScore(len(same), float(np.mean(same)) if same else 0.0, cross_n,
                        float(np.mean(cross)) if cross else 0.0)


def best_views(gallery: Gallery, truth, min_iou: float = MIN_IOU) -> dict[int, tuple[int, float]]:
    """Walker pid -> (detection, IoU) of the detection that frames that walker best (highest
    IoU with the annotated box, then highest score): the picture a person would click on.
    Walkers never detected with IoU >= ``min_iou`` are left out."""
    best: dict[int, tuple[int, float, float]] = {}
    for det in range(gallery.num_detections):
        f = int(gallery.detection_frame[det])
        boxes, pids = truth.people(gallery.frame_source[f], int(gallery.frame_index[f]))
        if len(boxes) == 0:
            continue
        iou = box_iou_one(gallery.boxes[det], boxes)
        k = int(np.argmax(iou))
        pid, score = int(pids[k]), float(gallery.scores[det])
        if pid == UNLABELED or iou[k] < min_iou:
            continue
        if pid not in best or (iou[k], score) > best[pid][1:]:
            best[pid] = (det, float(iou[k]), score)
    return {pid: (det, iou) for pid, (det, iou, _) in best.items()}


def _seen_on(labels: dict[int, int], gallery: Gallery, pid: int, cameras) -> bool:
    """Whether the gallery detected walker ``pid`` on any of ``cameras``."""
    return any(p == pid and gallery.frame_camera[int(gallery.detection_frame[d])] in cameras
               for d, p in labels.items())


# ------------------------------------------------------------------------------ tracks

def track_metrics(gallery: Gallery, track_of: np.ndarray, truth, min_iou: float = MIN_IOU):
    """py-motmetrics' IDF1, ID switches and MOTA per camera and overall (a DataFrame)."""
    import motmetrics   # here: with pandas and scipy it costs every command 1 s to import
    accumulators, names = [], []
    for camera in gallery.cameras:
        acc = motmetrics.MOTAccumulator(auto_id=True)
        frames = [f for f in range(gallery.num_frames) if gallery.frame_camera[f] == camera]
        for f in sorted(frames, key=lambda f: (gallery.frame_source[f], int(gallery.frame_index[f]))):
            _accumulate_frame(acc, gallery, track_of, truth, f, min_iou)
        accumulators.append(acc)
        names.append(camera)
    return motmetrics.metrics.create().compute_many(
        accumulators, metrics=["idf1", "num_switches", "mota", "num_unique_objects"],
        names=names, generate_overall=True)


def _accumulate_frame(acc, gallery: Gallery, track_of, truth, frame: int, min_iou: float) -> None:
    boxes, pids = truth.people(gallery.frame_source[frame], int(gallery.frame_index[frame]))
    rows = gallery.detections_of(frame)
    passer = boxes[pids == UNLABELED]
    rows = [r for r in rows if track_of[r] >= 0 and not (
        len(passer) and box_iou_one(gallery.boxes[r], passer).max() >= min_iou)]
    walkers = boxes[pids != UNLABELED]
    dist = np.full((len(walkers), len(rows)), np.nan)
    for j, r in enumerate(rows):
        if len(walkers):
            iou = box_iou_one(gallery.boxes[r], walkers)
            dist[:, j] = np.where(iou >= min_iou, 1.0 - iou, np.nan)
    acc.update(pids[pids != UNLABELED].tolist(), [int(track_of[r]) for r in rows], dist)


# ------------------------------------------------------------------------------ appearances

@dataclass
class AppearanceScore:
    queries: int
    top1: float                   # cross-camera: the best other-camera appearance is the walker's
    mean_ap: float
    all_queries: int = 0          # the detection-level score's cross-camera queries
    all_top1: float = 0.0         # top-1 over those (no appearance of the walker there: a miss)


def appearance_labels(gallery: Gallery, apps: Appearances, labels: dict[int, int]) -> np.ndarray:
    """(A,) the walker most of each appearance's detections cover (-1: none / passers-by)."""
    out = np.full(len(apps), -1, np.int64)
    for a, rows in enumerate(apps.members):
        votes = Counter(labels.get(int(r), -1) for r in rows)
        pid, _ = votes.most_common(1)[0]
        out[a] = pid
    return out


def score_appearances(gallery: Gallery, apps: Appearances, truth, *, pooled_query: bool = True,
                      rank: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                      min_iou: float = MIN_IOU) -> AppearanceScore:
    """Cross-camera appearance search scored as in the module docstring. Queries: every
    detection of a walker seen on another camera; ``pooled_query`` asks with its track's
    pooled embedding (the query's own appearance), else with the detection's own.
    ``rank(query, candidates)`` -> scores (default: inner products)."""
    labels = walker_detections(gallery, truth, min_iou)
    app_pid = appearance_labels(gallery, apps, labels)
    rank = rank or (lambda q, c: c @ q)
    top1, aps, all_queries = [], [], 0
    for det, pid in labels.items():
        camera = gallery.frame_camera_id[int(gallery.detection_frame[det])]
        others = np.flatnonzero(apps.camera != camera)
        visits = {int(apps.camera[a]) for a in others if app_pid[a] == pid}
        all_queries += _seen_on(labels, gallery, pid, tuple(
            c for k, c in enumerate(gallery.cameras) if k != camera))
        if not visits:
            continue
        track = int(apps.track_of[det])
        query = (apps.embeddings[track] if pooled_query and track >= 0
                 else gallery.embeddings([det])[0])
        order = others[np.argsort(-rank(query, apps.embeddings[others]), kind="stable")]
        top1.append(bool(app_pid[order[0]] == pid))
        aps.append(_visit_ap([(int(apps.camera[a]) if app_pid[a] == pid else None)
                              for a in order], len(visits)))
    return AppearanceScore(len(top1), float(np.mean(top1)) if top1 else 0.0,
                           float(np.mean(aps)) if aps else 0.0, all_queries,
                           float(np.sum(top1) / all_queries) if all_queries else 0.0)


def _visit_ap(ranked_visits: list, relevant: int) -> float:
    """AP over a ranked list of visit keys (None = wrong); a visit already found is skipped."""
    found, seen, precisions, position = 0, set(), [], 0
    for visit in ranked_visits:
        if visit is not None and visit in seen:
            continue
        position += 1
        if visit is not None:
            seen.add(visit)
            found += 1
            precisions.append(found / position)
    return float(np.sum(precisions) / relevant) if relevant else 0.0
