"""Pure NumPy metrics with the exact semantics of the classic OIM/SeqNet ``eval_func``.

Tie handling (documented once, used everywhere):
- ``average_precision`` reproduces scikit-learn's ``average_precision_score``: thresholds are the
  *distinct* score values; tied scores form one group that enters the precision/recall curve at
  once, AP = sum over groups of (positives in group / all positives) * precision at group end.
- A ranking is ``np.argsort(scores, kind="stable")[::-1]`` (the classic ``argsort()[::-1]`` made
  deterministic): among tied scores the LATER item (higher position) comes first.
"""
from __future__ import annotations

import numpy as np


def average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """sklearn ``average_precision_score`` for one binary ranking. (N,) bool, (N,) float.

    Returns 0.0 when there is no positive (sklearn would warn and return a meaningless value).
    """
    y_true = np.asarray(y_true, bool).ravel()
    y_score = np.asarray(y_score, np.float64).ravel()
    if y_true.shape != y_score.shape:
        raise ValueError(f"y_true {y_true.shape} and y_score {y_score.shape} differ in shape")
    num_pos = int(y_true.sum())
    if num_pos == 0:
        return 0.0
    order = np.argsort(-y_score, kind="stable")
    s, t = y_score[order], y_true[order]
    group_end = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]   # last index of each distinct score
    tp = np.cumsum(t)[group_end]
    keep = np.diff(np.r_[0, tp]) > 0                           # groups holding a positive
    return _ap_from_groups(tp[keep], group_end[keep] + 1, num_pos)


def _ap_from_groups(tp_cum: np.ndarray, n_cum: np.ndarray, num_pos: int) -> float:
    """Groups with positives, by descending score: cumulative positives and items at each
    group end -> sum of (recall step * precision), summed in that order."""
    precision = tp_cum / n_cum
    recall_step = np.diff(tp_cum, prepend=0) / num_pos
    return float(np.sum(recall_step * precision))


def average_precision_from_counts(pos_scores: np.ndarray, count_ge: np.ndarray) -> float:
    """Same AP when only the positives are known.

    pos_scores (P,): score of each positive; count_ge (P,): how many ranked items (positives
    included) have score >= that positive's score. Summed per distinct score exactly as
    ``average_precision`` (same order of floating-point operations).
    """
    pos_scores = np.asarray(pos_scores, np.float64)
    if pos_scores.size == 0:
        return 0.0
    values, first = np.unique(-pos_scores, return_index=True)   # distinct scores, descending
    pos_ge = (pos_scores[None, :] >= -values[:, None]).sum(1)
    return _ap_from_groups(pos_ge, np.asarray(count_ge, np.float64)[first], len(pos_scores))


def first_hit_rank(y_true: np.ndarray, y_score: np.ndarray) -> int:
    """0-based rank of the first correct item in the ranking (ties: later item first); -1 if none."""
    y_true = np.asarray(y_true, bool).ravel()
    if not y_true.any():
        return -1
    order = np.argsort(np.asarray(y_score, np.float64), kind="stable")[::-1]
    return int(np.argmax(y_true[order]))


def topk_from_rank(first_rank: np.ndarray, ks=(1, 5, 10)) -> np.ndarray:
    """(Q,) first-hit ranks (-1 = none) -> (Q, len(ks)) 0/1 top-k hits."""
    r = np.asarray(first_rank)[:, None]
    return ((r >= 0) & (r < np.asarray(ks)[None, :])).astype(np.float64)


def cmc_curve(first_rank: np.ndarray, max_rank: int = 50) -> np.ndarray:
    """(max_rank,) fraction of queries whose first correct hit is within the top k, k = 1..max_rank."""
    return topk_from_rank(first_rank, ks=np.arange(1, max_rank + 1)).mean(0) \
        if len(first_rank) else np.zeros(max_rank)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,4) x (M,4) x1,y1,x2,y2 -> (N,M) IoU, no +1 pixel convention (as the classic code)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2])
                 - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3])
                 - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def adaptive_iou_threshold(gt_boxes: np.ndarray) -> np.ndarray | float:
    """min(0.5, w*h / ((w+10)*(h+10))) of ground-truth boxes x1,y1,x2,y2: (N,4) -> (N,),
    (4,) -> float. Small persons get a looser threshold (the classic search protocol)."""
    b = np.asarray(gt_boxes, np.float64)
    w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    thresh = np.minimum(0.5, w * h / ((w + 10) * (h + 10)))
    return float(thresh) if b.ndim == 1 else thresh


def match_detections(gt_boxes: np.ndarray, det_boxes: np.ndarray, iou_thresh: float = 0.5
                     ) -> np.ndarray:
    """Classic ``eval_detection`` matching of one image -> (num_det,) bool "is a true positive".

    Pair (i, j) matches when IoU >= iou_thresh, j's best GT (argmax, first on ties) is i and i's
    best detection is j. IoUs are float32 as in the classic code. No GT: all detections false.
    """
    n_gt, n_det = len(gt_boxes), len(det_boxes)
    if n_gt == 0 or n_det == 0:
        return np.zeros(n_det, bool)
    ious = box_iou(gt_boxes, det_boxes).astype(np.float32)
    tf = ious >= iou_thresh
    best_gt = np.argmax(ious, axis=0)       # per detection
    best_det = np.argmax(ious, axis=1)      # per GT
    keep = np.zeros_like(tf)
    keep[best_gt, np.arange(n_det)] = True
    keep2 = np.zeros_like(tf)
    keep2[np.arange(n_gt), best_det] = True
    return (tf & keep & keep2).any(axis=0)


def greedy_match_detections(gt_boxes: np.ndarray, det_boxes: np.ndarray,
                            iou_thresh: float = 0.5) -> np.ndarray:
    """Greedy one-to-one matching of one image -> (num_det,) bool "is a true positive".

    Repeatedly take the highest remaining IoU pair >= iou_thresh and remove its GT and
    detection. Can match more than :func:`match_detections`: a GT whose best detection went to
    another GT may still take its second best. Not the classic code; an option only.
    """
    n_gt, n_det = len(gt_boxes), len(det_boxes)
    tp = np.zeros(n_det, bool)
    if n_gt == 0 or n_det == 0:
        return tp
    ious = box_iou(gt_boxes, det_boxes).astype(np.float32)
    while True:
        i, j = np.unravel_index(np.argmax(ious), ious.shape)
        if not ious[i, j] >= iou_thresh:
            return tp
        tp[j] = True
        ious[i, :], ious[:, j] = -1, -1


MATCHERS = {"classic": match_detections, "greedy": greedy_match_detections}


def match_detections_all(gt_boxes: list[np.ndarray], det_boxes: list[np.ndarray],
                         iou_thresh: float = 0.5) -> np.ndarray:
    """:func:`match_detections` of every image at once -> (sum N_i,) bool, images in order.

    All (GT, detection) pairs of each image in one flat array; each detection's best GT and
    each GT's best detection (highest IoU, the first on ties, as argmax) by grouped lexsorts.
    """
    n_gt = np.array([len(g) for g in gt_boxes], np.int64)
    n_det = np.array([len(d) for d in det_boxes], np.int64)
    pairs = n_gt * n_det
    tp = np.zeros(n_det.sum(), bool)
    if pairs.sum() == 0:
        return tp
    image = np.repeat(np.arange(len(pairs)), pairs)
    k = np.arange(pairs.sum()) - np.repeat(np.cumsum(pairs) - pairs, pairs)
    g = np.r_[0, np.cumsum(n_gt)[:-1]][image] + k // n_det[image]      # global GT index
    d = np.r_[0, np.cumsum(n_det)[:-1]][image] + k % n_det[image]      # global detection index
    gts = np.concatenate([np.asarray(b, np.float64).reshape(-1, 4) for b in gt_boxes])
    dets = np.concatenate([np.asarray(b, np.float64).reshape(-1, 4) for b in det_boxes])
    iou = box_iou_pairs(gts[g], dets[d]).astype(np.float32)
    best_gt = _first_best(d, g, iou)     # per detection: its best GT
    best_det = _first_best(g, d, iou)    # per GT: its best detection
    mutual = (iou >= iou_thresh) & (best_gt[d] == g) & (best_det[g] == d)
    tp[d[mutual]] = True
    return tp


def _first_best(group: np.ndarray, member: np.ndarray, value: np.ndarray) -> np.ndarray:
    """best[group] = the member with the highest value in that group, the smallest on ties."""
    order = np.lexsort((member, -value, group))
    first = np.insert(np.diff(group[order]) != 0, 0, True)
    best = np.full(group.max() + 1, -1, np.int64)
    best[group[order][first]] = member[order][first]
    return best


def detection_ap_recall(gt_boxes: list[np.ndarray], det_boxes: list[np.ndarray],
                        det_scores: list[np.ndarray], *, score_thresh: float = 0.01,
                        iou_thresh: float = 0.5, matching: str = "classic"
                        ) -> tuple[float, float]:
    """Detection (AP * recall, recall) over all images, as the classic ``eval_detection``.

    Per image: gt (G,4), dets (N,4), scores (N,). Detections below score_thresh are dropped;
    matched detections are positives of one global ranking by score. ``matching``: "classic"
    (mutual best IoU, :func:`match_detections`, the published numbers; every image at once by
    :func:`match_detections_all`) or "greedy".
    """
    if matching not in MATCHERS:
        raise ValueError(f"matching must be one of {sorted(MATCHERS)}, got {matching!r}")
    kept_dets, kept_scores = [], []
    for det, score in zip(det_boxes, det_scores):
        keep = np.asarray(score) >= score_thresh
        kept_dets.append(np.asarray(det).reshape(-1, 4)[keep])
        kept_scores.append(np.asarray(score)[keep])
    count_gt = sum(len(g) for g in gt_boxes)
    if count_gt == 0:
        return 0.0, 0.0
    if matching == "classic":
        y_true = match_detections_all(gt_boxes, kept_dets, iou_thresh)
    else:
        y_true = np.concatenate([MATCHERS[matching](g, d, iou_thresh)
                                 for g, d in zip(gt_boxes, kept_dets)] or [np.zeros(0, bool)])
    y_score = np.concatenate(kept_scores) if kept_scores else np.zeros(0)
    recall = int(y_true.sum()) / count_gt
    return average_precision(y_true, y_score) * recall, recall


def box_iou_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of (N,4) a[i] with (N,4) b[i] -> (N,)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    union = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
             + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)
