"""Scoring a footage gallery against synthetic ground truth: how often is the top hit the
query's identity?

Queries are the gallery's own detections of annotated walkers: every detection whose box
covers a walker (IoU >= ``min_iou``) asks "where else does this person appear?" as
``search --hit`` does (its own frame left out). The top hit is right when it covers the same
walker. ``cross_camera`` leaves the query's own camera out as well, so a hit one second
later on the same camera does not count: the harder question, close to PRW's multi-view
setting.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.data.records import UNLABELED
from pipeline.data.synthetic.video import box_iou_one
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
