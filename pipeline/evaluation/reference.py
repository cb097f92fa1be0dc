"""Slow, obvious per-query implementation of the search protocol, the way the classic
OIM/SeqNet ``eval_func`` does it (kept beside the fast path; tests check they agree exactly).

Gallery detections are given per gallery image of ``data.gallery`` (dataset order), already
filtered by the detection threshold: ``boxes[i]`` (Ni,4), ``embeddings[i]`` (Ni,D).
"""
from __future__ import annotations

import numpy as np

from pipeline.evaluation.metrics import adaptive_iou_threshold, average_precision, box_iou, \
    first_hit_rank
from pipeline.evaluation.protocols import QueryProtocol, gallery_images


def reference_query(protocol: QueryProtocol, query_embedding: np.ndarray,
                    boxes: list[np.ndarray], embeddings: list[np.ndarray]) -> dict:
    """-> {"ap", "first_rank", "count_gt", "count_tp"} of one query."""
    gt_of = {int(i): g for i, g in zip(protocol.positives, protocol.gt_boxes)}
    y_true, y_score, count_tp = [], [], 0
    for img in gallery_images(protocol, len(boxes)):
        det, feat = boxes[img], embeddings[img]
        if len(det) == 0:
            continue
        sim = (feat @ query_embedding).astype(np.float32)
        label = np.zeros(len(sim), bool)
        if int(img) in gt_of:
            gt = gt_of[int(img)]
            thresh = adaptive_iou_threshold(gt)
            order = np.argsort(sim, kind="stable")[::-1]
            for j in order:
                if box_iou(det[j], gt)[0, 0] >= thresh:
                    label[j] = True
                    count_tp += 1
                    break
        y_true.append(label)
        y_score.append(sim)
    y_true = np.concatenate(y_true) if y_true else np.zeros(0, bool)
    y_score = np.concatenate(y_score) if y_score else np.zeros(0, np.float32)
    count_gt = protocol.count_gt
    ap = 0.0 if count_tp == 0 else average_precision(y_true, y_score) * count_tp / count_gt
    return {"ap": ap, "first_rank": first_hit_rank(y_true, y_score),
            "count_gt": count_gt, "count_tp": count_tp}


def reference_search(protocols: list[QueryProtocol], query_embeddings: np.ndarray,
                     boxes: list[np.ndarray], embeddings: list[np.ndarray]) -> list[dict]:
    """reference_query for every query."""
    return [reference_query(p, query_embeddings[q], boxes, embeddings)
            for q, p in enumerate(protocols)]
