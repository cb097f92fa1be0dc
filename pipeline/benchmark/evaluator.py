"""Fast, vectorised search evaluation (same numbers as :mod:`reference`).

Per query, the similarities of all its gallery detections come from :class:`SimilarityIndex`
(PRW: one (chunk, T) block per query chunk, the excluded frames set to -inf; CUHK-SYSU: only the
dot products of the query's gallery). The correct detection of each positive image is found
by one grouped argmax (lexsort); AP and ranks are counted from the correct detections' scores
only (``count(score >= v)``, over the detections at least as similar as the least similar
correct one), never by sorting the whole ranking. Ties: see metrics.py. With ``cbgm`` the
similarities are re-scored first (cbgm.py). Ground-truth boxes are whole pixels as the
published numbers read them unless ``boxes="exact"`` (pipeline/data/published_boxes.py).

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

from pipeline.data.published_boxes import PUBLISHED, choose
from pipeline.data.records import UNLABELED, PersonSearchData
from pipeline.benchmark import cbgm as context_matching
from pipeline.benchmark.metrics import adaptive_iou_threshold, average_precision_from_counts, \
    box_iou_pairs, cmc_curve, detection_ap_recall, topk_from_rank
from pipeline.benchmark.protocols import QueryProtocol, build_protocol, gallery_images
from pipeline.benchmark.results_file import SearchResults
from pipeline.runtime.similarity import SimilarityIndex

TOPK = (1, 5, 10)
DETECTION_SCORE_THRESH = 0.01
DETECTION_IOU = 0.5
SORT_COUNT_LIMIT = 4096     # count by sorting at most this many similarities, else by scanning
TIE_MARGIN = 1e-6           # closer similarities are recomputed as the classic code does (5x the
                            # largest FAISS-vs-classic difference seen, 2.1e-7)


@dataclass
class KeptDetections:
    """Gallery detections with score >= det_thresh, grouped by gallery image (dataset order)."""

    offsets: np.ndarray      # (M+1,)
    boxes: np.ndarray        # (T,4) float64
    embeddings: np.ndarray   # (T,D) float32
    image: np.ndarray        # (T,) gallery image of each detection

    @classmethod
    def from_results(cls, results: SearchResults, det_thresh: float) -> "KeptDetections":
        g = results.gallery
        image = g.group_of_row()
        keep = g.scores >= det_thresh
        counts = np.bincount(image[keep], minlength=g.num_groups)
        return cls(np.r_[0, np.cumsum(counts)].astype(np.int64),
                   g.boxes[keep].astype(np.float64), g.embeddings[keep], image[keep])

    def rows_of(self, images: np.ndarray) -> np.ndarray:
        """Row indices of the detections of ``images``, concatenated in that order."""
        starts, ends = self.offsets[images], self.offsets[np.asarray(images) + 1]
        lengths = ends - starts
        if lengths.sum() == 0:
            return np.zeros(0, np.int64)
        shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
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


def qualifying_detections(kept: KeptDetections, protocols: list[QueryProtocol]
                          ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query: (rows, positive-image index) of the detections in its positive images whose
    IoU with the person's box reaches the adaptive threshold. They do not depend on the
    similarities, so all queries' are found at once."""
    counts = np.diff(kept.offsets)
    per_query = [int(counts[p.positives].sum()) for p in protocols]
    images = np.concatenate([p.positives for p in protocols] + [np.zeros(0, np.int64)])
    gt = np.concatenate([p.gt_boxes for p in protocols] + [np.zeros((0, 4))])
    det_rows = kept.rows_of(images)
    box_of_row = np.repeat(np.arange(len(images)), counts[images])
    ok = box_iou_pairs(kept.boxes[det_rows], gt[box_of_row]) >= \
        adaptive_iou_threshold(gt[box_of_row])
    first_box = np.cumsum([0] + [len(p.positives) for p in protocols])
    group = box_of_row - np.repeat(first_box[:-1], per_query)      # positive image within query
    bounds = np.cumsum([0] + per_query)
    return [(det_rows[a:b][ok[a:b]], group[a:b][ok[a:b]]) for a, b in zip(bounds[:-1], bounds[1:])]


def correct_detections(sims: np.ndarray, rows: np.ndarray | None,
                       qualifying: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Ranking positions (C,) and similarities (C,) of the correct detections of one query.

    sims (R,): similarities at ranking positions 0..R-1 (positions never in the gallery hold
    -inf); rows (R,) their detection rows, or None when position = row; qualifying: the query's
    (rows, positive image) from :func:`qualifying_detections`. In each positive image the
    correct one is the most similar qualifying detection (ties: the later detection), found for
    all positive images at once by a grouped lexsort.
    """
    ok_rows, group = qualifying
    if len(ok_rows) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    positions = ok_rows if rows is None else _positions(rows, ok_rows)
    s = sims[positions]
    order = np.lexsort((positions, s, group))        # per group: by sim, then by position
    last = np.append(np.diff(group[order]) != 0, True)
    return positions[order][last], s[order][last]


def count_at_least(sims: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(V,) how many of ``sims`` are >= each of ``values``: one scan keeps the candidates (those
    >= the smallest value); few are sorted once, many are counted per distinct value."""
    order = np.argsort(values)
    ascending = values[order]
    high = sims[sims >= ascending[0]]
    counts = np.empty(len(values), np.int64)
    if len(high) <= SORT_COUNT_LIMIT:
        counts[order] = len(high) - np.searchsorted(np.sort(high), ascending, side="left")
    else:
        counts[order] = [np.count_nonzero(high >= v) for v in ascending]
    return counts


def score_query(sims: np.ndarray, rows: np.ndarray | None, kept: KeptDetections,
                protocol: QueryProtocol, qualifying: tuple[np.ndarray, np.ndarray],
                query_embedding: np.ndarray | None = None) -> tuple[float, int, int]:
    """One query -> (AP, 0-based rank of the first correct hit or -1, count_tp).

    With ``query_embedding``, near ties are settled as the classic code computes (see
    :func:`settle_near_ties`); ``sims`` may change there."""
    if protocol.count_gt == 0:
        return 0.0, -1, 0
    correct_pos, correct_sim = correct_detections(sims, rows, qualifying)
    if len(correct_pos) == 0:
        return 0.0, -1, 0
    margins = query_embedding is not None
    counts = count_at_least(sims, _with_margins(correct_sim) if margins else correct_sim)
    crowded = _crowded(correct_sim, counts) if margins else []
    if len(crowded):
        settle_near_ties(sims, rows, kept, crowded, query_embedding)
        correct_pos, correct_sim = correct_detections(sims, rows, qualifying)
        counts = count_at_least(sims, correct_sim)
    count_tp = len(correct_pos)
    ap = average_precision_from_counts(correct_sim, counts[:count_tp]) * count_tp / protocol.count_gt
    # the first hit: the most similar correct detection, the later one among equals
    best = np.lexsort((correct_pos, correct_sim))[-1]
    v, p = correct_sim[best], correct_pos[best]
    rank = np.count_nonzero(sims > v) + np.count_nonzero(sims[p + 1:] == v)
    return ap, int(rank), count_tp


def _with_margins(values: np.ndarray) -> np.ndarray:
    """values, values - TIE_MARGIN, and the smallest number above values + TIE_MARGIN."""
    v = values.astype(np.float64)
    return np.concatenate([v, v - TIE_MARGIN, np.nextafter(v + TIE_MARGIN, np.inf)])


def _crowded(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The values with another similarity within TIE_MARGIN (counts from _with_margins)."""
    n = len(values)
    return values[counts[n:2 * n] - counts[2 * n:] > 1]


def settle_near_ties(sims: np.ndarray, rows: np.ndarray | None, kept: KeptDetections,
                     crowded: np.ndarray, query_embedding: np.ndarray) -> None:
    """Recompute, in place, the similarities of every image holding a detection within
    TIE_MARGIN of one of the ``crowded`` values (correct detections' similarities) the way the
    classic code does: one matrix-vector product per image. FAISS multiplies whole blocks, whose
    float32 sums can differ from those in the last bits (up to 2.1e-7 seen); between two
    near-equal similarities that can swap a ranking."""
    near = np.zeros(len(sims), bool)
    for value in crowded:
        near |= np.abs(sims - value) <= TIE_MARGIN
    positions = np.nonzero(near)[0]
    det_rows = positions if rows is None else rows[positions]
    images, first = np.unique(kept.image[det_rows], return_index=True)
    starts = positions[first] - (det_rows[first] - kept.offsets[images])   # image's first position
    for image, start in zip(images, starts):
        lo, hi = kept.offsets[image], kept.offsets[image + 1]
        sims[start:start + hi - lo] = kept.embeddings[lo:hi] @ query_embedding


def _positions(rows: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Ranking positions of detection rows ``wanted`` within ``rows`` (all present)."""
    lookup = np.argsort(rows, kind="stable")
    return lookup[np.searchsorted(rows, wanted, sorter=lookup)]


class SearchEvaluator:
    """evaluator.reset(); evaluator.process(results); evaluator.evaluate() -> SearchEvaluation.

    boxes: "published" (whole-pixel ground truth, the published numbers' convention) or
    "exact"; cbgm: re-score with context bipartite graph matching (k1 gallery detections, k2
    context people; None = SeqNet's defaults for the dataset).
    """

    def __init__(self, data: PersonSearchData, *, gallery_size: int | None = None,
                 multi_view: bool = False, det_thresh: float = 0.5, index: str = "flat",
                 chunk_size: int = 256, detection_score_thresh: float = DETECTION_SCORE_THRESH,
                 labeled_only: bool = False, detection_matching: str = "classic",
                 boxes: str = PUBLISHED, cbgm: bool = False, cbgm_k1: int | None = None,
                 cbgm_k2: int | None = None, use_gpu: bool | None = None, progress: bool = True):
        self.data, self.det_thresh, self.index_kind = data, det_thresh, index
        self.chunk_size, self.use_gpu, self.progress = chunk_size, use_gpu, progress
        self.detection_score_thresh, self.labeled_only = detection_score_thresh, labeled_only
        self.detection_matching, self.boxes = detection_matching, boxes
        self.gallery_size = gallery_size if gallery_size is not None else \
            (100 if data.dataset == "cuhk-sysu" else -1)
        self.multi_view = multi_view
        default_k1, default_k2 = context_matching.DEFAULT_K[data.dataset]
        self.cbgm = cbgm
        self.cbgm_k1 = default_k1 if cbgm_k1 is None else cbgm_k1
        self.cbgm_k2 = default_k2 if cbgm_k2 is None else cbgm_k2
        self.protocols = build_protocol(data, self.gallery_size, multi_view, boxes)
        self.reset()

    def reset(self):
        self.results: SearchResults | None = None
        self._kept: KeptDetections | None = None
        self._people: list[np.ndarray] | None = None
        self._index: SimilarityIndex | None = None
        self._qualifying: list | None = None

    def process(self, results: SearchResults):
        self.reset()
        self.results = results

    @property
    def context_source(self) -> str:
        return "query group" if self.results.context is not None else "gallery detections"

    def _prepare(self):
        """Kept detections, the index and (with CBGM) each query's context people, once."""
        if self._kept is None:
            self._kept = KeptDetections.from_results(self.results, self.det_thresh)
            self._index = SimilarityIndex(self._kept.embeddings, self.index_kind,
                                          use_gpu=self.use_gpu)
            self._qualifying = qualifying_detections(self._kept, self.protocols)
        if self.cbgm and self._people is None:
            self._people = self._context_people()
        return self._kept, self._index

    def _context_people(self) -> list[np.ndarray]:
        res, data = self.results, self.data
        context = res.context if res.context is not None else context_matching.gallery_context(
            res, [q.image for q in data.queries], [r.name for r in data.gallery])
        return [context_matching.context_people(
            res.query_embeddings[i], choose(q.box, q.published_box, data.dataset, self.boxes),
            context, i, self.det_thresh, self.cbgm_k2) for i, q in enumerate(data.queries)]

    def evaluate(self) -> SearchEvaluation:
        if self.results is None:
            raise RuntimeError("process(results) before evaluate()")
        kept, index = self._prepare()
        q = len(self.protocols)
        ap, rank = np.zeros(q), np.full(q, -1, np.int64)
        count_tp = np.zeros(q, np.int64)
        count_gt = np.array([p.count_gt for p in self.protocols], np.int64)
        for start in tqdm(range(0, q, self.chunk_size), desc="search eval", disable=not self.progress):
            stop = min(q, start + self.chunk_size)
            for i, (sims, rows) in zip(range(start, stop), self._similarities(start, stop)):
                exact = None if self.cbgm else self.results.query_embeddings[i]
                ap[i], rank[i], count_tp[i] = score_query(sims, rows, kept, self.protocols[i],
                                                          self._qualifying[i], exact)
        return self._summarise(self.results, ap, rank, count_gt, count_tp, index.approximate)

    def _similarities(self, start: int, stop: int):
        """Yield (sims, rows) per query of [start, stop): ranking-position similarities and
        their detection rows (None: position = row), CBGM applied when asked."""
        kept, index = self._prepare()
        protos, emb = self.protocols[start:stop], self.results.query_embeddings
        if all(p.gallery is None for p in protos):
            block = index.similarities(emb[start:stop])
            for i, (row, p) in enumerate(zip(block, protos), start):
                row[kept.rows_of(p.excluded)] = -np.inf
                yield self._rescored(i, row, None), None
            return
        for i, p in enumerate(protos, start):
            rows = kept.rows_of(p.gallery)
            yield self._rescored(i, index.similarities(emb[i:i + 1], rows)[0], rows), rows

    def _rescored(self, query: int, sims: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        if not self.cbgm:
            return sims
        kept, p = self._kept, self.protocols[query]
        candidates = None if p.listed is None else \
            int(np.diff(kept.offsets)[p.gallery[:p.listed]].sum())
        context_matching.rescore(sims, rows, kept.offsets, kept.image, kept.embeddings,
                                 self._people[query], self.cbgm_k1, candidates)
        return sims

    def top_hits(self, query: int, k: int = 10) -> list[dict]:
        """The k best ranked detections of one query: {"image", "box", "score", "correct"}."""
        kept, _ = self._prepare()
        p = self.protocols[query]
        rows = kept.rows_of(gallery_images(p, len(self.data.gallery)))
        sims = SimilarityIndex(kept.embeddings, "flat", use_gpu=False).similarities(
            self.results.query_embeddings[query:query + 1], rows)[0]
        sims = self._rescored(query, sims, rows)
        correct = set(correct_detections(sims, rows, self._qualifying[query])[0].tolist())
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
                   "boxes": self.boxes, "cbgm": self.cbgm,
                   **({"cbgm_k1": self.cbgm_k1, "cbgm_k2": self.cbgm_k2,
                       "cbgm_context": self.context_source} if self.cbgm else {}),
                   "index": self.index_kind, "approximate": self.index_kind != "flat",
                   "num_queries": len(ap),
                   "num_queries_without_gt": int((~valid).sum())}
        return SearchEvaluation(metrics, ap, rank, count_gt, count_tp, cmc_curve(rank[valid]))

    def detection_metrics(self, res: SearchResults) -> tuple[float, float]:
        """Detection AP * recall and recall over all gallery images (classic eval_detection)."""
        gts, dets, scores = [], [], []
        for i, rec in enumerate(self.data.gallery):
            gt = choose(rec.boxes, rec.published_boxes, self.data.dataset, self.boxes)
            if self.labeled_only:
                gt = gt[rec.pids != UNLABELED]
                if len(gt) == 0:
                    continue          # the classic code skips images without labeled persons
            sl = res.gallery.group(i)
            gts.append(gt)
            dets.append(res.gallery.boxes[sl])
            scores.append(res.gallery.scores[sl])
        return detection_ap_recall(gts, dets, scores, score_thresh=self.detection_score_thresh,
                                   iou_thresh=DETECTION_IOU, matching=self.detection_matching)


def evaluate_search(data: PersonSearchData, results: SearchResults, **options) -> SearchEvaluation:
    """Functional form: SearchEvaluator(data, **options) on ``results``."""
    ev = SearchEvaluator(data, **options)
    ev.process(results)
    return ev.evaluate()
