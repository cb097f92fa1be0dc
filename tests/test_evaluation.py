"""Evaluation: hand-computed protocol cases, fast path == per-query reference, results file."""
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.data.records import ImageRecord, PersonSearchData, QueryGallery, QueryRecord
from pipeline.benchmark import evaluator
from pipeline.benchmark.evaluator import evaluate_search
from pipeline.benchmark.metrics import (adaptive_iou_threshold, average_precision,
                                         detection_ap_recall, match_detections,
                                         match_detections_all)
from pipeline.benchmark.reference import reference_evaluate
from pipeline.runtime import faiss_index
from pipeline.runtime.types import Detections
from pipeline.benchmark.results_file import (ResultsFileError, SearchResults,
                                           read_results, write_results)

NAN4 = [np.nan] * 4


def rec(name, boxes, pids, camera=None):
    return ImageRecord(name, Path(name), 200, 200, np.array(boxes, np.float32).reshape(-1, 4),
                       np.array(pids, np.int64), camera)


def emb(sim):
    """2-D unit vector whose dot product with the query [1, 0] is ``sim``."""
    return [sim, np.sqrt(1 - sim * sim)]


def search_results(offsets, boxes, scores, embeddings, query_boxes, query_embeddings,
                   context=None) -> SearchResults:
    return SearchResults(Detections(np.asarray(offsets, np.int64),
                                    np.asarray(boxes, np.float32).reshape(-1, 4),
                                    np.asarray(scores, np.float32), np.asarray(embeddings)),
                         np.asarray(query_boxes, np.float32),
                         np.asarray(query_embeddings, np.float32), context)


def results(per_image, query_boxes, query_emb):
    """per_image: list of [(box, score, sim), ...] per gallery image (dataset order)."""
    off = np.r_[0, np.cumsum([len(d) for d in per_image])]
    flat = [d for dets in per_image for d in dets]
    return search_results(off, np.array([d[0] for d in flat], np.float32).reshape(-1, 4),
                         np.array([d[1] for d in flat], np.float32),
                         np.array([emb(d[2]) for d in flat], np.float32).reshape(-1, 2),
                         np.array(query_boxes, np.float32), np.array(query_emb, np.float32))


# ------------------------------------------------------------------ AP like sklearn

@pytest.mark.parametrize("y_true, y_score, expected", [
    ([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.6], 0.5 * 1 + 0.5 * 2 / 3),      # 0.8333
    ([0, 1, 1, 0], [0.9, 0.8, 0.8, 0.1], 2 / 3),   # tie group {0.8}: precision 2/3 for both
    ([1, 0], [0.5, 0.5], 0.5),                     # tied pos/neg: one group, precision 1/2
    ([0, 1], [0.3, 0.7], 1.0),
    ([1, 1, 0, 1], [0.2, 0.9, 0.9, 0.1], (1 / 3) * 0.5 + (1 / 3) * (2 / 3) + (1 / 3) * 0.75),
])
def test_average_precision_matches_sklearn_by_hand(y_true, y_score, expected):
    assert average_precision(y_true, y_score) == pytest.approx(expected, abs=1e-12)


def test_adaptive_iou_threshold():
    assert adaptive_iou_threshold(np.array([0, 0, 10, 10])) == pytest.approx(100 / 400)
    assert adaptive_iou_threshold(np.array([0, 0, 50, 100])) == 0.5
    many = adaptive_iou_threshold(np.array([[0, 0, 10, 10], [5, 5, 55, 105], [0, 0, 4, 6]]))
    np.testing.assert_allclose(many, [100 / 400, 0.5, 24 / (14 * 16)])


# ------------------------------------------------------------------ PRW by hand

def prw_world():
    """Query frame q (cam 1) holds pids 7 and 8.
    A (cam 2): pid 7 at [0,0,20,40] (thr 0.5). B (cam 2): pid 7 small [0,0,10,10] (thr 0.25).
    C (cam 2): pid 7, its only detection has score 0.3 (dropped). D (cam 1): pid 8, never detected.
    """
    gallery = [rec("q.jpg", [[0, 0, 20, 40], [60, 0, 80, 40]], [7, 8], 1),
               rec("A.jpg", [[0, 0, 20, 40]], [7], 2),
               rec("B.jpg", [[0, 0, 10, 10]], [7], 2),
               rec("C.jpg", [[0, 0, 20, 40]], [7], 2),
               rec("D.jpg", [[100, 100, 140, 180]], [8], 1)]
    queries = [QueryRecord("q.jpg", gallery[0].boxes[0], 7, 1),
               QueryRecord("q.jpg", gallery[0].boxes[1], 8, 1)]
    data = PersonSearchData("prw", Path("."), [], gallery, queries)
    dets = [[([0, 0, 20, 40], 0.9, 0.99)],                          # query frame: never counted
            [([0, 0, 20, 40], 0.9, 0.90), ([0, 0, 20, 40], 0.9, 0.95)],  # duplicates of pid 7
            [([0, 0, 10, 30], 0.8, 0.50)],     # IoU 1/3: correct only by the adaptive threshold
            [([0, 0, 20, 40], 0.3, 0.99)],     # below det_thresh 0.5
            [([0, 0, 30, 40], 0.6, 0.70)]]     # no target person here
    return data, results(dets, [q.box for q in queries], [[1, 0], [1, 0]])


def test_prw_hand_case():
    data, res = prw_world()
    ev = evaluate_search(data, res, progress=False)
    # query 7: ranking 0.95 (A, correct) 0.90 (A dup, wrong) 0.70 (D) 0.50 (B, correct);
    # count_gt 3 (A, B, C), count_tp 2. AP = (1/1 + 2/4)/2 = 0.75; x 2/3 = 0.5. Top-1 hit.
    # query 8: only in D, never detected: AP 0, no hit, count_gt 1, count_tp 0.
    assert ev.ap == pytest.approx([0.5, 0.0], abs=1e-12)
    assert ev.first_rank.tolist() == [0, -1]
    assert ev.count_gt.tolist() == [3, 1] and ev.count_tp.tolist() == [2, 0]
    assert ev.metrics["mAP"] == pytest.approx(0.25) and ev.metrics["top1"] == 0.5


def test_prw_multi_view_drops_the_query_camera():
    data, res = prw_world()
    ev = evaluate_search(data, res, multi_view=True, progress=False)
    # query 7 (cam 1): D (cam 1) leaves. Ranking 0.95 c, 0.90 w, 0.50 c; count_gt 3:
    # AP = (1 + 2/3)/2 = 0.8333 x 2/3 = 0.5556. Query 8: D was its only frame -> count_gt 0.
    assert ev.ap == pytest.approx([(1 + 2 / 3) / 2 * 2 / 3, 0.0], abs=1e-12)
    assert ev.count_gt.tolist() == [3, 0]
    # query 8 cannot be scored: left out of the means, and counted as such
    assert ev.metrics["mAP"] == pytest.approx(ev.ap[0]) and ev.metrics["top1"] == 1.0
    assert ev.metrics["num_queries_without_gt"] == 1 and ev.metrics["num_queries"] == 2


def test_adaptive_threshold_needed_for_small_box():
    data, res = prw_world()
    res.gallery.boxes[3] = [0, 0, 10, 21]            # IoU with [0,0,10,10] = 100/210 < 0.5 but >= 0.25
    assert evaluate_search(data, res, progress=False).count_tp[0] == 2
    res.gallery.boxes[3] = [0, 0, 10, 41]            # IoU 100/410 < 0.25 -> B no longer found
    assert evaluate_search(data, res, progress=False).count_tp[0] == 1


def test_det_thresh_drops_detections():
    data, res = prw_world()
    ev = evaluate_search(data, res, det_thresh=0.25, progress=False)
    # C's detection (0.99, correct) now counts: ranking 0.99 c, 0.95 c, 0.90, 0.70, 0.50 c
    # AP = (1 + 1 + 3/5)/3 x 3/3 = 0.8667
    assert ev.ap[0] == pytest.approx((1 + 1 + 3 / 5) / 3, abs=1e-12)


# ------------------------------------------------------------------ whole-pixel boxes by hand

def both_ways(data, res, **options):
    """Fast path and reference, published (default) and exact boxes -> {convention: (ap, tp)}."""
    out = {}
    for boxes in ("published", "exact"):
        ev = evaluate_search(data, res, boxes=boxes, progress=False, **options)
        ref = reference_evaluate(data, res, boxes=boxes, gallery_size=options.get("gallery_size"))
        assert ev.ap.tolist() == [r["ap"] for r in ref]
        assert ev.count_tp.tolist() == [r["count_tp"] for r in ref]
        out[boxes] = (ev.ap[0], int(ev.count_tp[0]), ev.metrics["det_recall"])
    return out


def test_prw_ground_truth_in_whole_pixels_by_hand():
    """A's person is at [0.9, 0.9, 10.9, 10.9]; whole pixels: [0, 0, 10, 10] (threshold
    100/400 = 0.25). The detection [0, 0, 10, 40] has IoU 100/400 = 0.25 with the whole-pixel
    box (correct) but 91/409 = 0.222 with the float box (threshold 0.25: wrong)."""
    gallery = [rec("q.jpg", [[0, 0, 20, 40]], [7], 1), rec("A.jpg", [[0.9, 0.9, 10.9, 10.9]], [7], 2)]
    data = PersonSearchData("prw", Path("."), [], gallery,
                            [QueryRecord("q.jpg", gallery[0].boxes[0], 7, 1)])
    res = results([[([0, 0, 20, 40], 0.9, 1.0)], [([0, 0, 10, 40], 0.9, 0.9)]],
                  [[0, 0, 20, 40]], [[1, 0]])
    got = both_ways(data, res)
    assert got["published"][:2] == (1.0, 1) and got["exact"][:2] == (0.0, 0)
    # detection (IoU >= 0.5 only): neither convention matches A's person; q's box is found
    assert got["published"][2] == got["exact"][2] == 0.5


def test_cuhk_ground_truth_truncated_before_adding_by_hand():
    """g0's person: x, y, w, h = 0.6, 0.6, 9.6, 9.6 -> whole pixels [0, 0, 9, 9] (w, h = 9:
    threshold 81/361 = 0.2244). The detection [0, 0, 9, 40]: IoU 81/360 = 0.225 (correct);
    with the float box [0.6, 0.6, 10.2, 10.2] (threshold 92.16/384.16 = 0.2399) IoU 80.64/371.52
    = 0.217 (wrong). Truncating after adding ([0, 0, 10, 10], threshold 0.25) would miss too."""
    box, small = [0, 0, 50, 100], [0.6, 0.6, 10.2, 10.2]
    gallery = [rec("q.jpg", [box], [-1]), rec("g0.jpg", [small], [-1]), rec("g1.jpg", [box], [-1])]
    galleries = {100: [QueryGallery(("g0.jpg", "g1.jpg"), np.array([small, NAN4], np.float32))]}
    data = PersonSearchData("cuhk-sysu", Path("."), [], gallery,
                            [QueryRecord("q.jpg", np.array(box, np.float32), 1)], galleries)
    res = results([[(box, 0.9, 1.0)], [([0, 0, 9, 40], 0.9, 0.7)], [(box, 0.9, 0.5)]],
                  [box], [[1, 0]])
    got = both_ways(data, res, gallery_size=100)
    assert got["published"][:2] == (1.0, 1) and got["exact"][:2] == (0.0, 0)


# ------------------------------------------------------------------ CBGM by hand

Q, MATE, OTHER = [1, 0, 0], [0, 0, 1], [0, 1, 0]     # the query, its companion, someone else


def unit(*v):
    v = np.array(v, np.float64)
    return (v / np.linalg.norm(v)).tolist()


def detections(groups):
    """groups: per image (or query) a list of (box, score, embedding) -> Detections."""
    off = np.r_[0, np.cumsum([len(g) for g in groups])]
    flat = [d for g in groups for d in g]
    return Detections(off, np.array([d[0] for d in flat], np.float32).reshape(-1, 4),
                      np.array([d[1] for d in flat], np.float32),
                      np.array([d[2] for d in flat], np.float32).reshape(-1, 3))


def cbgm_prw_world(with_context=True):
    """Query pid 1 in q (cam 1) walks with pid 2. A: pid 1 (similarity 0.5) with pid 2;
    B: a stranger at 0.6; E: a stranger at 0.3 who looks like the companion (0.9).
    q's own detections: the query person itself (a box overlapping the query box, IoU > 0.5),
    the companion, and a low-score box (0.3 < det_thresh)."""
    left, right = [0, 0, 20, 40], [40, 0, 60, 40]
    gallery = [rec("q.jpg", [left, right], [1, 2], 1), rec("A.jpg", [left, right], [1, 2], 2),
               rec("B.jpg", [[100, 0, 120, 40]], [3], 2), rec("E.jpg", [[90, 0, 110, 40]], [4], 2)]
    data = PersonSearchData("prw", Path("."), [], gallery,
                            [QueryRecord("q.jpg", np.array(left, np.float32), 1, 1)])
    g = detections([[(left, 0.9, Q), (right, 0.9, MATE)],
                    [(left, 0.9, unit(0.5, 0.75 ** 0.5, 0)), (right, 0.9, MATE)],
                    [([100, 0, 120, 40], 0.9, [0.6, 0.8, 0])],
                    [([90, 0, 110, 40], 0.9, unit(0.3, 0, 0.9))]])
    context = detections([[([0, 0, 20, 41], 0.95, OTHER), (right, 0.9, MATE),
                           ([70, 0, 90, 40], 0.3, OTHER)]]) if with_context else None
    return data, SearchResults(g, np.array([left], np.float32), np.array([Q], np.float32),
                               context)


@pytest.mark.parametrize("options, ap, rank", [
    ({}, 0.5, 1),                       # no CBGM: B 0.6 (wrong) ranks above A's person (0.5)
    # A: weights [[0.5, 0], [0, 1]] -> query-person, companion-companion; the matching's
    # largest weight (1.0) becomes the person's similarity. B: the query takes the stranger
    # (0.6 stays). E: the companion takes its only detection, the query is left out (0.3 stays).
    ({"cbgm": True}, 1.0, 0),
    ({"cbgm": True, "cbgm_k1": 1}, 0.5, 1),   # only B, the most similar, is re-scored
    ({"cbgm": True, "cbgm_k2": 1}, 0.5, 1),   # no companion: A's matching is the query alone
])
def test_cbgm_prw_by_hand(options, ap, rank):
    data, res = cbgm_prw_world()
    ev = evaluate_search(data, res, progress=False, **options)
    assert ev.ap.tolist() == [ap] and ev.first_rank.tolist() == [rank]
    ref = reference_evaluate(data, res, cbgm=options.get("cbgm", False),
                             k1=options.get("cbgm_k1"), k2=options.get("cbgm_k2"))
    assert [r["ap"] for r in ref] == [ap] and [r["first_rank"] for r in ref] == [rank]


def test_cbgm_context_leaves_out_the_query_itself_and_weak_boxes():
    """Were q's own box (IoU > 0.5 with the query box, embedding OTHER) a context person, it
    would win A's person (0.87 + 1 > 0.5 + 1) and the query would go unmatched: AP 0.5."""
    data, res = cbgm_prw_world()
    res.context.boxes[0] = [200, 0, 220, 40]          # now a separate person
    assert evaluate_search(data, res, cbgm=True, progress=False).ap.tolist() == [0.5]
    assert [r["ap"] for r in reference_evaluate(data, res, cbgm=True)] == [0.5]


def test_cbgm_without_context_group_uses_the_query_images_gallery_detections():
    data, res = cbgm_prw_world(with_context=False)
    ev = evaluate_search(data, res, cbgm=True, progress=False)
    assert ev.ap.tolist() == [1.0] and ev.metrics["cbgm_context"] == "gallery detections"
    assert [r["ap"] for r in reference_evaluate(data, res, cbgm=True)] == [1.0]
    assert (ev.metrics["cbgm_k1"], ev.metrics["cbgm_k2"]) == (30, 4)      # SeqNet's PRW values


def test_cbgm_cuhk_by_hand():
    """TestG100: g0 (a stranger at 0.8), g1 (the query person at 0.6, beside its companion):
    CBGM lifts the person to 1.0, AP 0.5 -> 1.0. Whole pool (-1): the TestG50 list (g1) then
    g0 and g2 (a stranger at 0.7 beside someone like the companion). Only the list is
    re-scored, as in SeqNet: g2 keeps 0.7 (re-scored it would tie the person at 1.0: AP 0.5)."""
    box, other = [0, 0, 50, 100], [60, 0, 110, 100]
    gallery = [rec("q.jpg", [box, other], [-1, -1]), rec("g0.jpg", [box], [-1]),
               rec("g1.jpg", [box, other], [-1, -1]), rec("g2.jpg", [box, other], [-1, -1])]
    galleries = {50: [QueryGallery(("g1.jpg",), np.array([box], np.float32))],
                 100: [QueryGallery(("g0.jpg", "g1.jpg"), np.array([NAN4, box], np.float32))]}
    data = PersonSearchData("cuhk-sysu", Path("."), [], gallery,
                            [QueryRecord("q.jpg", np.array(box, np.float32), 1)], galleries)
    g = detections([[(box, 0.9, Q), (other, 0.9, MATE)], [(box, 0.9, [0.8, 0.6, 0])],
                    [(box, 0.9, [0.6, 0.8, 0]), (other, 0.9, MATE)],
                    [(box, 0.9, unit(0.7, 0.71 ** 0.5, 0)), (other, 0.9, MATE)]])
    res = SearchResults(g, np.array([box], np.float32), np.array([Q], np.float32))
    for size, plain, matched in ((100, 0.5, 1.0), (-1, 1 / 3, 1.0)):
        for cbgm, ap in ((False, plain), (True, matched)):
            ev = evaluate_search(data, res, gallery_size=size, cbgm=cbgm, progress=False)
            ref = reference_evaluate(data, res, gallery_size=size, cbgm=cbgm)
            assert ev.ap.tolist() == [r["ap"] for r in ref] == pytest.approx([ap]), (size, cbgm)
    assert ev.metrics["cbgm_k1"] == 10 and ev.metrics["cbgm_k2"] == 3     # SeqNet's CUHK values


def test_near_ties_are_settled_as_the_classic_code_computes(monkeypatch):
    """FAISS multiplies whole blocks; its float32 sums may differ from one product per image in
    the last bits. Here A's person is at 0.5 and B's stranger at 0.5 - 2**-23 computed image by
    image, but the block puts the stranger 3e-7 higher: the evaluator recomputes such near ties
    per image, so the person still ranks first (the classic code's ranking)."""
    gallery = [rec("q.jpg", [[0, 0, 20, 40]], [7], 1), rec("A.jpg", [[0, 0, 20, 40]], [7], 2),
               rec("B.jpg", [[50, 0, 70, 40]], [3], 2)]
    data = PersonSearchData("prw", Path("."), [], gallery,
                            [QueryRecord("q.jpg", gallery[0].boxes[0], 7, 1)])
    res = results([[([0, 0, 20, 40], 0.9, 1.0)], [([0, 0, 20, 40], 0.9, 0.5)],
                   [([50, 0, 70, 40], 0.9, 0.5 - 2 ** -23)]], [[0, 0, 20, 40]], [[1, 0]])
    exact = faiss_index.SimilarityIndex.similarities

    def blockwise(self, queries, rows=None):
        sims = exact(self, queries, rows)
        sims[:, -1] += 3e-7                 # B's only detection is the last kept row
        return sims

    monkeypatch.setattr(faiss_index.SimilarityIndex, "similarities", blockwise)
    ev = evaluate_search(data, res, progress=False)
    assert ev.first_rank.tolist() == [0] and ev.ap.tolist() == [1.0]
    assert [r["first_rank"] for r in reference_evaluate(data, res)] == [0]
    monkeypatch.setattr(evaluator, "settle_near_ties", lambda *args: None)
    assert evaluate_search(data, res, progress=False).first_rank.tolist() == [1]


# ------------------------------------------------------------------ CUHK-SYSU by hand

def cuhk_world():
    """Pool: q, g0, g1, g2, g3. TestG50 gallery of the query: g0 (person at [0,0,50,100]), g1
    (absent). TestG100 adds g2 (person present)."""
    box = [0, 0, 50, 100]
    gallery = [rec(n, [box], [-1]) for n in ("q.jpg", "g0.jpg", "g1.jpg", "g2.jpg", "g3.jpg")]
    queries = [QueryRecord("q.jpg", np.array(box, np.float32), 1)]
    galleries = {50: [QueryGallery(("g0.jpg", "g1.jpg"), np.array([box, NAN4], np.float32))],
                 100: [QueryGallery(("g0.jpg", "g1.jpg", "g2.jpg"),
                                    np.array([box, NAN4, box], np.float32))]}
    data = PersonSearchData("cuhk-sysu", Path("."), [], gallery, queries, galleries)
    dets = [[(box, 0.9, 0.99)], [(box, 0.9, 0.8)], [(box, 0.9, 0.8)], [(box, 0.9, 0.6)],
            [(box, 0.9, 0.9)]]
    return data, results(dets, [box], [[1, 0]])


@pytest.mark.parametrize("size, ap, rank", [
    (50, 0.5, 1),       # g0 0.8 c tied with g1 0.8 w: one group, precision 1/2. Tie order: the
                        # later item (g1) first, so the first correct hit is at rank 1.
    (100, 0.5 * 0.5 + 0.5 * 2 / 3, 1),   # + g2 0.6 c: precision 2/3 -> 0.5833
    (-1, 1 / 3, 2),     # all pool but q: g3 0.9 w, g1, g0 (tie group: 1 of 3), g2 not positive
])
def test_cuhk_gallery_sizes(size, ap, rank):
    data, res = cuhk_world()
    ev = evaluate_search(data, res, gallery_size=size, progress=False)
    assert ev.ap[0] == pytest.approx(ap, abs=1e-12)
    assert ev.first_rank[0] == rank
    assert ev.metrics["top1"] == 0.0 and ev.metrics["top5"] == 1.0


# ------------------------------------------------------------------ detection by hand

def test_detection_ap_recall_by_hand():
    gts = [np.array([[0, 0, 10, 10], [20, 0, 30, 10]]), np.array([[0, 0, 10, 10]])]
    dets = [np.array([[0, 0, 10, 10], [0, 0, 10, 9], [20, 0, 30, 10], [50, 50, 60, 60]]),
            np.zeros((0, 4))]
    scores = [np.array([0.9, 0.8, 0.7, 0.005]), np.zeros(0)]
    # matches: det0-gt0, det2-gt1; det1 (IoU 0.9 with gt0) is gt0's second best -> FP;
    # det3 dropped (< 0.01). recall 2/3; AP = (1 + 2/3)/2 -> det AP = 0.8333 * 2/3 = 0.5556
    ap, recall = detection_ap_recall(gts, dets, scores)
    assert recall == pytest.approx(2 / 3)
    assert ap == pytest.approx((1 + 2 / 3) / 2 * 2 / 3)


# ------------------------------------------------------------------ fast == reference

def random_world(rng, dataset, images=40, queries=15, dim=6):
    gal = []
    for i in range(images):
        n = int(rng.integers(1, 4))
        xy, wh = rng.uniform(0, 100, (n, 2)), rng.uniform(4, 40, (n, 2))
        pids = rng.choice(np.r_[-1, np.arange(8)], n, replace=False)
        gal.append(rec(f"i{i}.jpg", np.c_[xy, xy + wh], pids,
                       int(rng.integers(1, 4)) if dataset == "prw" else None))
    qs = [QueryRecord(r.name, b, int(p), r.camera) for r in gal for b, p in zip(r.boxes, r.pids)
          if p >= 0][:queries]
    qg = {}
    for size, count in ((50, 8), (100, 16)):
        qg[size] = []
        for q in qs:
            pick = rng.choice([j for j, r in enumerate(gal) if r.name != q.image], count, False)
            bx = [gal[j].boxes[gal[j].pids == q.pid][0] if (gal[j].pids == q.pid).any() else NAN4
                  for j in pick]
            qg[size].append(QueryGallery(tuple(gal[j].name for j in pick), np.array(bx, np.float32)))
    data = PersonSearchData(dataset, Path("."), [], gal, qs, qg if dataset == "cuhk-sysu" else {})
    boxes, off = [], [0]
    for r in gal:
        b = np.r_[r.boxes + rng.normal(0, 3, r.boxes.shape), rng.uniform(0, 100, (2, 4))]
        b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 1)
        boxes.append(b)
        off.append(off[-1] + len(b))
    # embeddings on a coarse grid: dot products exact in float32 and many ties
    res = search_results(np.array(off), np.concatenate(boxes).astype(np.float32),
                        rng.uniform(0, 1, off[-1]).astype(np.float32),
                        (rng.integers(-2, 3, (off[-1], dim)) / 4).astype(np.float32),
                        np.array([q.box for q in qs]),
                        (rng.integers(-2, 3, (len(qs), dim)) / 4).astype(np.float32))
    return data, res


FAST_VS_REFERENCE = [
    ("prw", {}), ("prw", {"multi_view": True}), ("prw", {"boxes": "exact"}),
    ("prw", {"cbgm": True}), ("prw", {"cbgm": True, "multi_view": True, "cbgm_k1": 3}),
    ("cuhk-sysu", {"gallery_size": 50}), ("cuhk-sysu", {"gallery_size": 100}),
    ("cuhk-sysu", {"gallery_size": -1}), ("cuhk-sysu", {"gallery_size": 100, "boxes": "exact"}),
    ("cuhk-sysu", {"gallery_size": 100, "cbgm": True}),
    ("cuhk-sysu", {"gallery_size": -1, "cbgm": True, "cbgm_k1": 4, "cbgm_k2": 2})]


@pytest.mark.parametrize("dataset, options", FAST_VS_REFERENCE)
def test_fast_path_equals_reference(dataset, options):
    """The reference builds galleries, positives, kept detections and CBGM on its own."""
    rng = np.random.default_rng(3)
    ref_options = {(k[-2:] if k.startswith("cbgm_") else k): v for k, v in options.items()}
    for trial in range(4):
        data, res = random_world(rng, dataset)
        if trial % 2:              # half the worlds carry a context group of their own
            res.context = random_context(rng, data, res)
        ev = evaluate_search(data, res, chunk_size=4, progress=False, **options)
        ref = reference_evaluate(data, res, **ref_options)
        assert ev.ap.tolist() == [r["ap"] for r in ref]
        assert ev.first_rank.tolist() == [r["first_rank"] for r in ref]
        assert ev.count_tp.tolist() == [r["count_tp"] for r in ref]
        assert ev.count_gt.tolist() == [r["count_gt"] for r in ref]


def random_context(rng, data, res, dim=6):
    """Each query image's people: the query box (jittered) and others, grid embeddings."""
    boxes, scores, embs, offsets = [], [], [], [0]
    for q, e in zip(data.queries, res.query_embeddings):
        n = int(rng.integers(0, 5))
        own = np.r_[[q.box + rng.normal(0, 1, 4)], rng.uniform(0, 100, (n, 2)).repeat(2, 1)
                    + [0, 0, 20, 40]]
        boxes.append(own)
        scores.append(rng.uniform(0.3, 1, len(own)))
        embs.append(np.r_[[e], rng.integers(-2, 3, (n, dim)) / 4])
        offsets.append(offsets[-1] + len(own))
    return Detections(np.array(offsets), np.concatenate(boxes).astype(np.float32),
                      np.concatenate(scores).astype(np.float32),
                      np.concatenate(embs).astype(np.float32))


# ------------------------------------------------------------------ results file

GALLERY_KEYS = ("offsets", "boxes", "scores", "embeddings")


def write_world(path, data, res, **change):
    """The results file of ``res``; ``change``: write_results arguments to replace, and
    gallery datasets (offsets, boxes, ...) written as given, however malformed."""
    args = dict(dataset=data.dataset, gallery_images=[r.name for r in data.gallery],
                gallery=res.gallery, query_images=[q.image for q in data.queries],
                query_boxes=res.query_boxes, query_embeddings=res.query_embeddings)
    args.update({k: v for k, v in change.items() if k not in GALLERY_KEYS})
    path = write_results(path, **args)
    with h5py.File(path, "a") as f:
        for key in GALLERY_KEYS:
            if key in change:
                del f[f"gallery/{key}"]
                f[f"gallery/{key}"] = change[key]
    return path


def test_results_round_trip_reorders_and_normalises(tmp_path):
    data, res = prw_world()
    order = [3, 0, 4, 2, 1]
    per = [np.arange(res.gallery.offsets[i], res.gallery.offsets[i + 1]) for i in order]
    rows = np.concatenate(per)
    scaled = res.gallery.embeddings[rows] * 3
    scaled[0] = 0                                       # a zero vector stays zero
    path = write_world(tmp_path / "r.h5", data, res,
                       gallery_images=[data.gallery[i].name for i in order],
                       offsets=np.r_[0, np.cumsum([len(p) for p in per])], boxes=res.gallery.boxes[rows],
                       scores=res.gallery.scores[rows], embeddings=scaled.astype(np.float16))
    back = read_results(path, data)
    assert back.gallery.offsets.tolist() == res.gallery.offsets.tolist()
    np.testing.assert_array_equal(back.gallery.boxes, res.gallery.boxes)
    np.testing.assert_array_equal(back.gallery.scores, res.gallery.scores)
    zero = res.gallery.offsets[3]                               # image 3's first detection
    assert np.all(back.gallery.embeddings[zero] == 0)
    norms = np.linalg.norm(np.delete(back.gallery.embeddings, zero, 0), axis=1)
    np.testing.assert_allclose(norms, 1, atol=1e-6)
    assert evaluate_search(data, back, progress=False).ap == pytest.approx([0.5, 0], abs=1e-3)


def test_results_schema_2_context_group_round_trip_and_schema_1_still_read(tmp_path):
    data, res = cbgm_prw_world()
    c = res.context
    path = write_world(tmp_path / "r.h5", data, res,
                       context=Detections(c.offsets, c.boxes, c.scores, c.embeddings * 2))
    with h5py.File(path) as f:
        assert f.attrs["schema"] == "person-search-results/2" and "query/context_boxes" in f
    back = read_results(path, data)
    np.testing.assert_array_equal(back.context.offsets, c.offsets)
    np.testing.assert_array_equal(back.context.boxes, c.boxes)
    np.testing.assert_allclose(back.context.embeddings, c.embeddings, atol=1e-7)  # normalised
    assert evaluate_search(data, back, cbgm=True, progress=False).ap.tolist() == [1.0]
    old = write_world(tmp_path / "old.h5", data, res)
    with h5py.File(old, "a") as f:
        f.attrs["schema"] = "person-search-results/1"
    assert read_results(old, data).context is None


def test_results_query_boxes_in_whole_pixels_are_accepted(tmp_path):
    data, res = prw_world()
    queries = [QueryRecord(q.image, q.box + 0.75, q.pid, q.camera) for q in data.queries]
    data = PersonSearchData("prw", Path("."), [], data.gallery, queries)
    whole = np.floor(res.query_boxes + 0.75)                 # as the published code embeds them
    assert read_results(write_world(tmp_path / "a.h5", data, res, query_boxes=whole), data)
    with pytest.raises(ResultsFileError, match="whole pixels"):
        read_results(write_world(tmp_path / "b.h5", data, res, query_boxes=whole - 0.75), data)


@pytest.mark.parametrize("edit, match", [
    (lambda f: _drop(f, "query/context_scores"), "context_scores is missing"),
    (lambda f: _replace(f, "query/context_offsets", lambda a: a[:-1]), "context_offsets"),
    (lambda f: _replace(f, "query/context_embeddings", lambda a: a[:, :2]), "D must equal"),
    (lambda f: _replace(f, "query/context_boxes", lambda a: a * np.nan), "context_boxes holds NaN"),
])
def test_bad_context_group_refused(tmp_path, edit, match):
    data, res = cbgm_prw_world()
    c = res.context
    path = write_world(tmp_path / "r.h5", data, res,
                       context=c)
    with h5py.File(path, "a") as f:
        edit(f)
    with pytest.raises(ResultsFileError, match=match):
        read_results(path, data)


def _drop(f, key):
    del f[key]


def _replace(f, key, change):
    """Rewrite dataset ``key`` with change(its values) (dtype may change)."""
    values = change(f[key][()])
    del f[key]
    f.create_dataset(key, data=values)


def _set_attr(name, value):
    return lambda f: f.attrs.__setitem__(name, value)


@pytest.mark.parametrize("edit, match", [
    (_set_attr("schema", "other/1"), "schema"),
    (_set_attr("dataset", "cuhk-sysu"), "dataset"),
    (lambda f: _drop(f, "gallery/scores"), "missing dataset /gallery/scores"),
    (lambda f: _replace(f, "gallery/offsets", lambda a: a + 0.5), "offsets must be integers"),
    (lambda f: _replace(f, "query/embeddings", lambda a: (a * 4).astype(np.int32)), "float32"),
])
def test_bad_attributes_refused(tmp_path, edit, match):
    data, res = prw_world()
    path = write_world(tmp_path / "r.h5", data, res)
    with h5py.File(path, "a") as f:
        edit(f)
    with pytest.raises(ResultsFileError, match=match):
        read_results(path, data)


@pytest.mark.parametrize("change, match", [
    (lambda r: {"offsets": r.gallery.offsets[[0, 2, 1, 3, 4, 5]]}, "offsets"),
    (lambda r: {"offsets": np.r_[r.gallery.offsets[:-1], r.gallery.offsets[-1] - 1]}, "offsets"),
    (lambda r: {"embeddings": np.where(np.arange(len(r.gallery.scores))[:, None] == 2, np.nan,
                                       r.gallery.embeddings)}, "NaN"),
    (lambda r: {"query_embeddings": np.ones((2, 3))}, "D must equal"),
    (lambda r: {"gallery_images": ["q.jpg", "A.jpg", "B.jpg", "C.jpg", "E.jpg"]}, "missing"),
    (lambda r: {"gallery_images": ["q.jpg", "A.jpg", "B.jpg", "C.jpg", "A.jpg"]}, "more than once"),
    (lambda r: {"query_boxes": r.query_boxes + 1}, "differs"),
    (lambda r: {"query_images": ["q.jpg", "A.jpg"]}, "query 1"),
    (lambda r: {"query_boxes": r.query_boxes[:1], "query_images": ["q.jpg"],
                "query_embeddings": r.query_embeddings[:1]}, "2 queries"),
    (lambda r: {"boxes": r.gallery.boxes[:, :3]}, "boxes"),
    (lambda r: {"gallery_images": ["q.jpg", "A.jpg", "B.jpg", "C.jpg", "D.jpg", "X.jpg"],
                "offsets": np.r_[r.gallery.offsets, r.gallery.offsets[-1]]}, "not in the test set"),
    (lambda r: {"scores": np.where(np.arange(len(r.gallery.scores)) == 1, np.nan, r.gallery.scores)}, "NaN"),
])
def test_bad_contents_refused(tmp_path, change, match):
    data, res = prw_world()
    path = write_world(tmp_path / "r.h5", data, res, **change(res))
    with pytest.raises(ResultsFileError, match=match):
        read_results(path, data)


# ------------------------------------------------------------------ CLI on the synthetic world

def test_cli_evaluate_on_synthetic_prw(synthetic_prw, tmp_path):
    """Ground-truth boxes as detections with one-hot identity embeddings: a perfect searcher."""
    from click.testing import CliRunner

    import cli
    from pipeline.data import read_dataset
    data = read_dataset("prw", synthetic_prw)
    pids = sorted({int(p) for r in data.gallery for p in r.pids if p >= 0})
    onehot = {p: np.eye(len(pids))[i] for i, p in enumerate(pids)}
    zero = np.zeros(len(pids))
    boxes = np.concatenate([r.boxes for r in data.gallery])
    embs = np.array([onehot.get(int(p), zero) for r in data.gallery for p in r.pids])
    gallery = Detections(np.r_[0, np.cumsum([len(r.boxes) for r in data.gallery])], boxes,
                         np.ones(len(boxes), np.float32), embs.astype(np.float32))
    path = write_results(tmp_path / "r.h5", "prw", [r.name for r in data.gallery], gallery,
                         [q.image for q in data.queries],
                         np.array([q.box for q in data.queries]),
                         np.array([onehot[q.pid] for q in data.queries]))
    out = CliRunner().invoke(cli.cli, [
        "evaluate", "--dataset", "prw", "--root", str(synthetic_prw), "--results", str(path),
        "--json", str(tmp_path / "m.json"), "--per-query", str(tmp_path / "q.csv"),
        "--visualize", "2", "--out-dir", str(tmp_path / "vis")])
    assert out.exit_code == 0, out.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["mAP"] == 1.0 and metrics["top1"] == 1.0
    assert metrics["det_ap"] == 1.0 and metrics["det_recall"] == 1.0
    assert metrics["num_queries"] == len(data.queries) and metrics["approximate"] is False
    import pandas as pd
    table = pd.read_csv(tmp_path / "q.csv")
    assert len(table) == len(data.queries) and (table["first_correct_rank"] == 1).all()
    assert len(list((tmp_path / "vis").glob("query_*.png"))) == 2
    assert (tmp_path / "vis" / "cmc.png").is_file()
    bad = CliRunner().invoke(cli.cli, ["evaluate", "--dataset", "prw", "--root",
                                       str(synthetic_prw), "--results", str(path),
                                       "--gallery-size", "50"])
    assert bad.exit_code != 0 and "PRW" in bad.output
    for flags, expect in ((["--cbgm", "--cbgm-k1", "5"], {"cbgm": True, "cbgm_k1": 5,
                                                          "cbgm_k2": 4, "boxes": "published"}),
                          (["--exact-boxes"], {"cbgm": False, "boxes": "exact"})):
        out = CliRunner().invoke(cli.cli, ["evaluate", "--dataset", "prw", "--root",
                                           str(synthetic_prw), "--results", str(path),
                                           "--json", str(tmp_path / "f.json"), *flags])
        assert out.exit_code == 0, out.output
        metrics = json.loads((tmp_path / "f.json").read_text())
        assert metrics["mAP"] == 1.0 and expect.items() <= metrics.items()


def test_tied_duplicates_in_one_image_the_later_is_correct():
    data, res = prw_world()
    res.gallery.embeddings[1] = res.gallery.embeddings[2]        # A's two duplicates now both have sim 0.95
    ev = evaluate_search(data, res, progress=False)
    # classic argsort()[::-1]: among equal sims the later detection comes first, so it is the
    # correct one and ranks first. Group {0.95}: 1 correct of 2 -> precision 1/2; then
    # 0.70 w, 0.50 c -> 2/4. AP = (1/2 + 1/2)/2 = 0.5, x 2/3 = 1/3.
    assert ev.first_rank[0] == 0
    assert ev.ap[0] == pytest.approx(1 / 3, abs=1e-12)


# ------------------------------------------------------------------ run_searcher

class GroundTruthSearcher:
    """A searcher (pipeline.runtime.searcher) that 'detects' the ground-truth boxes of each image
    and embeds every box by its identity (one-hot; unlabeled persons: the last axis)."""

    def __init__(self, data, pids):
        self.records = list(data.gallery)                # detect() is called in gallery order
        # embed_boxes() sees each query image once, with its queries in query order; the
        # images in the order of their first query
        self.query_order = query_image_order(data.queries)
        self.query_pids = [data.queries[i].pid for i in self.query_order]
        self.axis = {p: i for i, p in enumerate(pids)}
        self.dim = self.embedding_dim = len(pids) + 1
        self.embedded = []

    def _embed(self, pids):
        import torch
        e = torch.zeros(len(pids), self.dim)
        e[torch.arange(len(pids)), [self.axis.get(int(p), self.dim - 1) for p in pids]] = 1
        return e

    def detect(self, images):
        import torch
        out = []
        for image in images:
            rec = self.records.pop(0)
            assert tuple(image.shape) == (3, rec.height, rec.width)
            out.append({"boxes": torch.as_tensor(rec.boxes), "scores": torch.ones(len(rec.boxes)),
                        "embeddings": self._embed(rec.pids)})
        return out

    def embed_boxes(self, images, boxes):
        self.embedded += [b.numpy() for b in boxes]
        out = []
        for b in boxes:
            out.append(self._embed(self.query_pids[:len(b)]))
            del self.query_pids[:len(b)]
        return out


def query_image_order(queries) -> list[int]:
    """Query indices grouped by image (images by their first query), query order within."""
    first = {}
    for i, q in enumerate(queries):
        first.setdefault(q.image, i)
    return sorted(range(len(queries)), key=lambda i: first[queries[i].image])


def test_run_searcher_writes_a_valid_results_file(synthetic_prw, tmp_path):
    import torch

    from pipeline.data import read_dataset
    from pipeline.benchmark.run import run_searcher
    data = read_dataset("prw", synthetic_prw)
    # half-pixel query boxes, to see which form is embedded (the world's boxes are whole)
    data.queries = [QueryRecord(q.image, q.box + 0.5, q.pid, q.camera) for q in data.queries]
    pids = sorted({int(p) for r in data.gallery for p in r.pids if p >= 0})
    searcher = GroundTruthSearcher(data, pids)
    path = run_searcher(searcher, data, tmp_path / "r.h5", device="cpu", batch_size=3,
                        amp=True, progress=False)
    res = read_results(path, data)           # validates names, counts, query boxes
    assert len(res.gallery.scores) == sum(len(r.boxes) for r in data.gallery)
    ev = evaluate_search(data, res, progress=False)
    assert ev.metrics["mAP"] == 1.0 and ev.metrics["det_recall"] == 1.0
    # query boxes were embedded in whole pixels; each query's context is its image's detections
    np.testing.assert_array_equal(np.concatenate(searcher.embedded).reshape(-1, 4),
                                  [data.queries[i].box - 0.5 for i in searcher.query_order])
    # one embedding pass per query image, however many queries it holds
    assert len(searcher.embedded) == len({q.image for q in data.queries})
    names = [r.name for r in data.gallery]
    for i, q in enumerate(data.queries):
        np.testing.assert_array_equal(res.context.boxes[res.context.group(i)],
                                      data.gallery[names.index(q.image)].boxes)
    assert evaluate_search(data, res, cbgm=True, progress=False).metrics["cbgm_context"] \
        == "query group"


def test_similarity_index_flat_exact_and_ivf_flagged():
    SimilarityIndex = faiss_index.SimilarityIndex
    rng = np.random.default_rng(0)
    base = (rng.integers(-2, 3, (300, 8)) / 4).astype(np.float32)
    q = (rng.integers(-2, 3, (3, 8)) / 4).astype(np.float32)
    flat = SimilarityIndex(base, "flat", use_gpu=False)
    np.testing.assert_array_equal(flat.similarities(q), q @ base.T)
    np.testing.assert_array_equal(flat.similarities(q, np.array([5, 2])), (q @ base.T)[:, [5, 2]])
    sims, ids = flat.search(q, 5)
    np.testing.assert_allclose(sims, np.sort(q @ base.T, axis=1)[:, ::-1][:, :5])
    ivf = SimilarityIndex(base, "ivf", use_gpu=False, nlist=4, nprobe=4)
    assert ivf.approximate and not flat.approximate
    assert ivf.similarities(q).shape == (3, 300)



def test_detection_matching_classic_mutual_best_vs_greedy():
    gts = [np.array([[0, 0, 10, 10], [2, 0, 12, 10]], np.float32)]
    dets = [np.array([[0.5, 0, 10.5, 10], [4, 0, 14, 10]], np.float32)]
    scores = [np.array([0.9, 0.8])]
    # IoU(det0, gt0) = 9.5/10.5 = 0.905, IoU(det0, gt1) = 8.5/11.5 = 0.739,
    # IoU(det1, gt1) = 8/12 = 0.667, IoU(det1, gt0) = 6/14 = 0.43.
    # classic (mutual best): det0-gt0; gt1's best detection is det0 (taken) -> det1 unmatched.
    # recall 1/2; ranking det0 (tp) 0.9, det1 (fp) 0.8: AP 1 -> det AP 0.5.
    assert detection_ap_recall(gts, dets, scores) == pytest.approx((0.5, 0.5))
    # greedy: det0-gt0 (0.905), then det1-gt1 (0.667): recall 1, AP 1.
    assert detection_ap_recall(gts, dets, scores, matching="greedy") == pytest.approx((1.0, 1.0))


def perfect_results(data):
    """Ground-truth boxes as detections, one-hot identity embeddings (unlabeled: zero)."""
    pids = sorted({int(p) for r in data.gallery for p in r.pids if p >= 0})
    onehot = {p: np.eye(len(pids))[i] for i, p in enumerate(pids)}
    zero = np.zeros(len(pids))
    embs = np.array([onehot.get(int(p), zero) for r in data.gallery for p in r.pids], np.float32)
    query_pid = {}                # CUHK query pids are protocol indices: use the query box's pid
    for q in data.queries:
        rec = next(r for r in data.gallery if r.name == q.image)
        query_pid[id(q)] = int(rec.pids[np.argmin(np.abs(rec.boxes - q.box).sum(1))])
    return search_results(np.r_[0, np.cumsum([len(r.boxes) for r in data.gallery])],
                         np.concatenate([r.boxes for r in data.gallery]),
                         np.ones(len(embs), np.float32), embs,
                         np.array([q.box for q in data.queries], np.float32),
                         np.array([onehot[query_pid[id(q)]] for q in data.queries], np.float32))


@pytest.mark.parametrize("size", [50, -1])
def test_perfect_searcher_on_synthetic_cuhk(synthetic_cuhk, size):
    from pipeline.data import read_dataset
    data = read_dataset("cuhk-sysu", synthetic_cuhk)
    ev = evaluate_search(data, perfect_results(data), gallery_size=size, progress=False)
    assert ev.metrics["mAP"] == 1.0 and ev.metrics["top1"] == 1.0
    assert ev.metrics["num_queries"] == len(data.queries) and ev.metrics["gallery_size"] == size


def test_cli_refuses_a_bad_results_file_cleanly(synthetic_prw, tmp_path):
    from click.testing import CliRunner

    import cli
    from pipeline.data import read_dataset
    data = read_dataset("prw", synthetic_prw)
    res = perfect_results(data)
    path = write_results(tmp_path / "r.h5", "cuhk-sysu", [r.name for r in data.gallery],
                         res.gallery, [q.image for q in data.queries], res.query_boxes,
                         res.query_embeddings)
    out = CliRunner().invoke(cli.cli, ["evaluate", "--dataset", "prw", "--root",
                                       str(synthetic_prw), "--results", str(path)])
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert out.output == (f"Error: {path}: results are for dataset 'cuhk-sysu', not 'prw'\n")
