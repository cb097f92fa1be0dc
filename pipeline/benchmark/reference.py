"""Slow, obvious per-query search evaluation, one gallery image at a time, the way the classic
OIM/SeqNet ``eval_func`` reads; tests check that the fast path (evaluator.py) agrees exactly.

It is written apart from the fast path on purpose, so that each checks the other: from the
dataset records and a :class:`SearchResults` alone it builds every query's gallery and the
query person's box in each gallery image (not protocols.py), keeps the detections that pass
the score threshold (not KeptDetections), computes similarities with NumPy (not FAISS), applies
CBGM image by image (not cbgm.py) and finds the correct detection of each image with a plain
loop. It shares only definitions: IoU, the adaptive IoU threshold, sklearn's AP and the
ranking's tie rule (metrics.py), the box convention (pipeline/data/published_boxes.py), CBGM's
constants (cbgm.py) and SciPy's Kuhn-Munkres solver.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from pipeline.data.published_boxes import PUBLISHED, choose
from pipeline.data.records import PersonSearchData, QueryRecord
from pipeline.benchmark.cbgm import CONTEXT_NMS_IOU, DEFAULT_K
from pipeline.benchmark.metrics import adaptive_iou_threshold, average_precision, box_iou, \
    first_hit_rank
from pipeline.benchmark.results_file import SearchResults


def reference_evaluate(data: PersonSearchData, results: SearchResults, *,
                       gallery_size: int | None = None, multi_view: bool = False,
                       det_thresh: float = 0.5, boxes: str = PUBLISHED, cbgm: bool = False,
                       k1: int | None = None, k2: int | None = None) -> list[dict]:
    """Per query: {"ap", "first_rank", "count_gt", "count_tp"}."""
    k1 = DEFAULT_K[data.dataset][0] if k1 is None else k1
    k2 = DEFAULT_K[data.dataset][1] if k2 is None else k2
    names = [r.name for r in data.gallery]
    out = []
    for i, q in enumerate(data.queries):
        gallery, gt_of, listed = query_gallery(data, i, gallery_size, multi_view, boxes)
        dets = {g: kept_detections(results, g, det_thresh) for g in gallery}
        sims = {g: (emb @ results.query_embeddings[i]).astype(np.float32)
                for g, (_, emb) in dets.items()}
        if cbgm:
            people = context(data, results, i, q, names, det_thresh, k2, boxes)
            match_context(sims, dets, gallery[:listed], people, k1)
        out.append(score(gallery, gt_of, dets, sims))
    return out


def query_gallery(data: PersonSearchData, i: int, gallery_size: int | None, multi_view: bool,
                  boxes: str) -> tuple[list[int], dict[int, np.ndarray], int]:
    """(gallery image indices in order, {image: the query person's box}, how many leading
    images CBGM may re-score)."""
    q = data.queries[i]
    if data.dataset == "prw":
        gallery = [g for g, r in enumerate(data.gallery) if r.name != q.image
                   and not (multi_view and r.camera == q.camera)]
        gt_of = {}
        for g in gallery:
            r = data.gallery[g]
            if q.pid in r.pids:
                gt_of[g] = choose(r.boxes, r.published_boxes, "prw", boxes)[list(r.pids).index(q.pid)]
        return gallery, gt_of, len(gallery)
    size = 100 if gallery_size is None else gallery_size
    protocol = data.query_galleries[50 if size == -1 else size][i]
    where = {r.name: g for g, r in enumerate(data.gallery)}
    gallery = [where[n] for n in protocol.images]
    gt = choose(protocol.boxes, protocol.published_boxes, "cuhk-sysu", boxes)
    gt_of = {g: b for g, b in zip(gallery, gt) if not np.isnan(b).any()}
    listed = len(gallery)
    if size == -1:
        gallery += [g for g, r in enumerate(data.gallery)
                    if r.name != q.image and r.name not in protocol.images]
    return gallery, gt_of, listed


def kept_detections(results: SearchResults, g: int, det_thresh: float):
    """(boxes, embeddings) of gallery image g with score >= det_thresh."""
    rows = results.gallery.group(g)
    keep = results.gallery.scores[rows] >= det_thresh
    return results.gallery.boxes[rows][keep], results.gallery.embeddings[rows][keep]


def context(data, results, i: int, q: QueryRecord, names: list[str], det_thresh: float, k2: int,
            boxes: str) -> np.ndarray:
    """The query person's embedding, then up to k2 - 1 other people of its own image."""
    if results.context is not None:
        rows = results.context.group(i)
        own = (results.context.boxes[rows], results.context.scores[rows],
               results.context.embeddings[rows])
    elif q.image in names:
        g = names.index(q.image)
        rows = results.gallery.group(g)
        own = (results.gallery.boxes[rows], results.gallery.scores[rows],
               results.gallery.embeddings[rows])
    else:
        own = (np.zeros((0, 4)), np.zeros(0), np.zeros((0, results.gallery.dim)))
    query_box = choose(q.box, q.published_box, data.dataset, boxes)[0]
    people = [results.query_embeddings[i]]
    for j in np.argsort(-own[1], kind="stable"):
        if len(people) == k2:
            break
        if own[1][j] >= det_thresh and box_iou(own[0][j], query_box)[0, 0] <= CONTEXT_NMS_IOU:
            people.append(own[2][j])
    return np.array(people, np.float32)


def match_context(sims: dict, dets: dict, candidates: list[int], people: np.ndarray, k1: int):
    """CBGM: in the images of the k1 detections most similar to the query, the query person's
    Kuhn-Munkres partner takes the matching's largest similarity."""
    flat = [(g, j, s) for g in candidates for j, s in enumerate(sims[g])]
    ranking = np.argsort(np.array([s for _, _, s in flat], np.float32), kind="stable")[::-1]
    for g in {flat[t][0] for t in ranking[:k1]}:
        weights = people @ dets[g][1].T
        who, what = linear_sum_assignment(weights, maximize=True)
        if 0 in who:
            sims[g][what[list(who).index(0)]] = weights[who, what].max()


def score(gallery: list[int], gt_of: dict, dets: dict, sims: dict) -> dict:
    """AP x recall and the first hit of one query, as eval_func does."""
    y_true, y_score, count_tp = [], [], 0
    for g in gallery:
        boxes, sim = dets[g][0], sims[g]
        label = np.zeros(len(sim), bool)
        if g in gt_of and len(sim):
            for j in np.argsort(sim, kind="stable")[::-1]:      # most similar first
                if box_iou(boxes[j], gt_of[g])[0, 0] >= adaptive_iou_threshold(gt_of[g]):
                    label[j] = True
                    count_tp += 1
                    break
        y_true.append(label)
        y_score.append(sim)
    y_true = np.concatenate(y_true) if y_true else np.zeros(0, bool)
    y_score = np.concatenate(y_score) if y_score else np.zeros(0, np.float32)
    count_gt = len(gt_of)
    ap = 0.0 if count_tp == 0 else average_precision(y_true, y_score) * count_tp / count_gt
    return {"ap": ap, "first_rank": first_hit_rank(y_true, y_score) if count_tp else -1,
            "count_gt": count_gt, "count_tp": count_tp}
