"""Fast, vectorised search evaluation (same numbers as :mod:`reference`).

Per query, the similarities of all its gallery detections come from :class:`SimilarityIndex`
(PRW: one (chunk, T) block per query chunk, the excluded frames set to -inf; CUHK-SYSU: only the
dot products of the query's gallery). The correct detection of each positive image is found
by one grouped argmax (lexsort); AP and ranks are counted from the correct detections' scores
only (``count(score >= v)``), never by sorting the whole ranking. Ties: see metrics.py.

Queries with count_gt == 0 (no gallery image holds the person, e.g. PRW multi-view when the
person was seen by the query camera only; never with the standard galleries of the real data,
where the classic code would divide by zero) cannot be scored: their per-query AP is 0 with no
hit, and they are left out of mAP, top-k and CMC (as torchreid skips queries without a valid
match); ``num_queries_without_gt`` reports how many.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from pipeline.data.records import UNLABELED, PersonSearchData
from pipeline.evaluation.metrics import average_precision_from_counts, box_iou_pairs, \
    cmc_curve, detection_ap_recall, topk_from_rank
from pipeline.evaluation.protocols import QueryProtocol, build_protocol, gallery_images
from pipeline.gallery.results_file import SearchResults
from pipeline.gallery.similarity import SimilarityIndex

TOPK = (1, 5, 10)
DETECTION_SCORE_THRESH = 0.01
DETECTION_IOU = 0.5


@dataclass
class KeptDetections:
    """Gallery detections with score >= det_thresh, grouped by gallery image (dataset order)."""

    offsets: np.ndarray      # (M+1,)
    boxes: np.ndarray        # (T,4) float64
    embeddings: np.ndarray   # (T,D) float32
    image: np.ndarray        # (T,) gallery image of each detection

    @classmethod
    def from_results(cls, results: SearchResults, det_thresh: float) -> "KeptDetections":
        image = results.image_of_detection()
        keep = results.scores >= det_thresh
        counts = np.bincount(image[keep], minlength=len(results.offsets) - 1)
        return cls(np.r_[0, np.cumsum(counts)].astype(np.int64),
                   results.boxes[keep].astype(np.float64), results.embeddings[keep], image[keep])

    def rows_of(self, images: np.ndarray) -> np.ndarray:
        """Row indices of the detections of ``images``, concatenated in that order."""
        starts, ends = self.offsets[images], self.offsets[np.asarray(images) + 1]
        lengths = ends - starts
        if lengths.sum() == 0:
            return np.zeros(0, np.int64)
        shift = np.repeat(starts - np.r_[0, np.cumsum(lengths)[:-1]], lengths)
        return np.arange(lengths.sum()) + shift


@dataclass
class SearchEvaluation:
    """Metrics (fractions) and per-query arrays."""

    metrics: dict
    ap: np.ndarray            # (Q,)
    first_rank: np.ndarray    # (Q,) 0-based rank of the first correct hit, -1 when none
    count_gt: np.ndarray
    count_tp: np.ndarray
    cmc: np.ndarray = field(default_factory=lambda: np.zeros(0))


def correct_detections(sims: np.ndarray, rows: np.ndarray | None, kept: KeptDetections,
                       protocol: QueryProtocol) -> tuple[np.ndarray, np.ndarray]:
    """Ranking positions (C,) and similarities (C,) of the correct detections of one query.

    sims (R,): similarities at ranking positions 0..R-1 (positions never in the gallery hold
    -inf); rows (R,) their detection rows, or None when position = row. In each positive image
    the correct one is the most similar detection with IoU >= the adaptive threshold (ties:
    the later detection), found for all positive images at once by a grouped lexsort.
    """
    pos_rows = kept.rows_of(protocol.positives)
    if len(pos_rows) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    group = np.repeat(np.arange(len(protocol.positives)), np.diff(kept.offsets)[protocol.positives])
    gt = protocol.gt_boxes[group]
    w, h = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    thresh = np.minimum(0.5, w * h / ((w + 10) * (h + 10)))
    ok = box_iou_pairs(kept.boxes[pos_rows], gt) >= thresh
    positions = pos_rows if rows is None else _positions(rows, pos_rows)
    positions, group = positions[ok], group[ok]
    s = sims[positions]
    order = np.lexsort((positions, s, group))        # per group: by sim, then by position
    last = np.r_[np.diff(group[order]) != 0, True] if len(order) else np.zeros(0, bool)
    return positions[order][last], s[order][last]


def score_query(sims: np.ndarray, rows: np.ndarray | None, kept: KeptDetections,
                protocol: QueryProtocol) -> tuple[float, int, int]:
    """One query -> (AP, 0-based rank of the first correct hit or -1, count_tp)."""
    if protocol.count_gt == 0:
        return 0.0, -1, 0
    correct_pos, correct_sim = correct_detections(sims, rows, kept, protocol)
    count_tp = len(correct_pos)
    if count_tp == 0:
        return 0.0, -1, 0
    count_ge = np.array([np.count_nonzero(sims >= v) for v in correct_sim])
    ap = average_precision_from_counts(correct_sim, count_ge) * count_tp / protocol.count_gt
    ranks = [np.count_nonzero(sims > v) + np.count_nonzero(sims[p + 1:] == v)
             for v, p in zip(correct_sim, correct_pos)]
    return ap, int(min(ranks)), count_tp


def _positions(rows: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Ranking positions of detection rows ``wanted`` within ``rows`` (all present)."""
    lookup = np.argsort(rows, kind="stable")
    return lookup[np.searchsorted(rows, wanted, sorter=lookup)]


class SearchEvaluator:
    """evaluator.reset(); evaluator.process(results); evaluator.evaluate() -> SearchEvaluation."""

    def __init__(self, data: PersonSearchData, *, gallery_size: int | None = None,
                 multi_view: bool = False, det_thresh: float = 0.5, index: str = "flat",
                 chunk_size: int = 64, detection_score_thresh: float = DETECTION_SCORE_THRESH,
                 labeled_only: bool = False, detection_matching: str = "classic",
                 use_gpu: bool | None = None, progress: bool = True):
        self.data, self.det_thresh, self.index_kind = data, det_thresh, index
        self.chunk_size, self.use_gpu, self.progress = chunk_size, use_gpu, progress
        self.detection_score_thresh, self.labeled_only = detection_score_thresh, labeled_only
        self.detection_matching = detection_matching
        self.gallery_size = gallery_size if gallery_size is not None else \
            (100 if data.dataset == "cuhk-sysu" else -1)
        self.multi_view = multi_view
        self.protocols = build_protocol(data, self.gallery_size, multi_view)
        self.reset()

    def reset(self):
        self.results: SearchResults | None = None
        self._kept: KeptDetections | None = None

    def process(self, results: SearchResults):
        self.results, self._kept = results, None

    def evaluate(self) -> SearchEvaluation:
        if self.results is None:
            raise RuntimeError("process(results) before evaluate()")
        res = self.results
        kept = self._kept = KeptDetections.from_results(res, self.det_thresh)
        index = SimilarityIndex(kept.embeddings, self.index_kind, use_gpu=self.use_gpu)
        q = len(self.protocols)
        ap, rank = np.zeros(q), np.full(q, -1, np.int64)
        count_tp = np.zeros(q, np.int64)
        count_gt = np.array([p.count_gt for p in self.protocols], np.int64)
        for start in tqdm(range(0, q, self.chunk_size), desc="search eval", disable=not self.progress):
            stop = min(q, start + self.chunk_size)
            for i, out in zip(range(start, stop), self._chunk(index, kept, res, start, stop)):
                ap[i], rank[i], count_tp[i] = out
        return self._summarise(res, ap, rank, count_gt, count_tp, index.approximate)

    def _chunk(self, index, kept, res, start, stop):
        protos = self.protocols[start:stop]
        if all(p.gallery is None for p in protos):
            block = index.similarities(res.query_embeddings[start:stop])
            for row, p in zip(block, protos):
                row[kept.rows_of(p.excluded)] = -np.inf
                yield score_query(row, None, kept, p)
            return
        for i, p in zip(range(start, stop), protos):
            rows = kept.rows_of(p.gallery)
            sims = index.similarities(res.query_embeddings[i:i + 1], rows)[0]
            yield score_query(sims, rows, kept, p)

    def top_hits(self, query: int, k: int = 10) -> list[dict]:
        """The k best ranked detections of one query: {"image", "box", "score", "correct"}."""
        res, p = self.results, self.protocols[query]
        if self._kept is None:
            self._kept = KeptDetections.from_results(res, self.det_thresh)
        kept = self._kept
        rows = kept.rows_of(gallery_images(p, len(self.data.gallery)))
        sims = SimilarityIndex(kept.embeddings, "flat", use_gpu=False).similarities(
            res.query_embeddings[query:query + 1], rows)[0]
        correct = set(correct_detections(sims, rows, kept, p)[0].tolist())
        order = np.argsort(sims, kind="stable")[::-1][:k]
        return [{"image": int(kept.image[rows[j]]), "box": kept.boxes[rows[j]],
                 "score": float(sims[j]), "correct": int(j) in correct} for j in order]

    def _summarise(self, res, ap, rank, count_gt, count_tp, approximate) -> SearchEvaluation:
        det_ap, det_recall = self.detection_metrics(res)
        valid = count_gt > 0
        topk = topk_from_rank(rank[valid], TOPK).mean(0) if valid.any() else np.zeros(len(TOPK))
        metrics = {"mAP": float(ap[valid].mean()) if valid.any() else 0.0,
                   **{f"top{k}": float(v) for k, v in zip(TOPK, topk)},
                   "det_ap": det_ap, "det_recall": det_recall,
                   "dataset": self.data.dataset, "gallery_size": self.gallery_size,
                   "multi_view": self.multi_view, "det_thresh": self.det_thresh,
                   "index": self.index_kind, "approximate": self.index_kind != "flat",
                   "num_queries": len(ap),
                   "num_queries_without_gt": int((~valid).sum())}
        return SearchEvaluation(metrics, ap, rank, count_gt, count_tp, cmc_curve(rank[valid]))

    def detection_metrics(self, res: SearchResults) -> tuple[float, float]:
        """Detection AP * recall and recall over all gallery images (classic eval_detection)."""
        gts, dets, scores = [], [], []
        for i, rec in enumerate(self.data.gallery):
            gt = rec.boxes
            if self.labeled_only:
                gt = rec.boxes[rec.pids != UNLABELED]
                if len(gt) == 0:
                    continue          # the classic code skips images without labeled persons
            sl = slice(res.offsets[i], res.offsets[i + 1])
            gts.append(gt)
            dets.append(res.boxes[sl])
            scores.append(res.scores[sl])
        return detection_ap_recall(gts, dets, scores, score_thresh=self.detection_score_thresh,
                                   iou_thresh=DETECTION_IOU, matching=self.detection_matching)


def evaluate_search(data: PersonSearchData, results: SearchResults, **options) -> SearchEvaluation:
    """Functional form: SearchEvaluator(data, **options) on ``results``."""
    ev = SearchEvaluator(data, **options)
    ev.process(results)
    return ev.evaluate()
