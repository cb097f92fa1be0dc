"""Evaluation: hand-computed protocol cases, fast path == per-query reference, results file."""
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.data.records import ImageRecord, PersonSearchData, QueryGallery, QueryRecord
from pipeline.evaluation.evaluator import KeptDetections, evaluate_search
from pipeline.evaluation.metrics import (adaptive_iou_threshold, average_precision,
                                         detection_ap_recall)
from pipeline.evaluation.protocols import build_protocol
from pipeline.evaluation.reference import reference_search
from pipeline.gallery.results_file import (ResultsFileError, SearchResults, read_results,
                                              write_results)

NAN4 = [np.nan] * 4


def rec(name, boxes, pids, camera=None):
    return ImageRecord(name, Path(name), 200, 200, np.array(boxes, np.float32).reshape(-1, 4),
                       np.array(pids, np.int64), camera)


def emb(sim):
    """2-D unit vector whose dot product with the query [1, 0] is ``sim``."""
    return [sim, np.sqrt(1 - sim * sim)]


def results(per_image, query_boxes, query_emb):
    """per_image: list of [(box, score, sim), ...] per gallery image (dataset order)."""
    off = np.r_[0, np.cumsum([len(d) for d in per_image])]
    flat = [d for dets in per_image for d in dets]
    return SearchResults(off, np.array([d[0] for d in flat], np.float32).reshape(-1, 4),
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
    res.boxes[3] = [0, 0, 10, 21]            # IoU with [0,0,10,10] = 100/210 < 0.5 but >= 0.25
    assert evaluate_search(data, res, progress=False).count_tp[0] == 2
    res.boxes[3] = [0, 0, 10, 41]            # IoU 100/410 < 0.25 -> B no longer found
    assert evaluate_search(data, res, progress=False).count_tp[0] == 1


def test_det_thresh_drops_detections():
    data, res = prw_world()
    ev = evaluate_search(data, res, det_thresh=0.25, progress=False)
    # C's detection (0.99, correct) now counts: ranking 0.99 c, 0.95 c, 0.90, 0.70, 0.50 c
    # AP = (1 + 1 + 3/5)/3 x 3/3 = 0.8667
    assert ev.ap[0] == pytest.approx((1 + 1 + 3 / 5) / 3, abs=1e-12)


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
    res = SearchResults(np.array(off), np.concatenate(boxes).astype(np.float32),
                        rng.uniform(0, 1, off[-1]).astype(np.float32),
                        (rng.integers(-2, 3, (off[-1], dim)) / 4).astype(np.float32),
                        np.array([q.box for q in qs]),
                        (rng.integers(-2, 3, (len(qs), dim)) / 4).astype(np.float32))
    return data, res


@pytest.mark.parametrize("dataset, options", [
    ("prw", {}), ("prw", {"multi_view": True}), ("cuhk-sysu", {"gallery_size": 50}),
    ("cuhk-sysu", {"gallery_size": 100}), ("cuhk-sysu", {"gallery_size": -1})])
def test_fast_path_equals_reference(dataset, options):
    rng = np.random.default_rng(3)
    for _ in range(4):
        data, res = random_world(rng, dataset)
        ev = evaluate_search(data, res, chunk_size=4, progress=False, **options)
        kept = KeptDetections.from_results(res, 0.5)
        split = [slice(a, b) for a, b in zip(kept.offsets[:-1], kept.offsets[1:])]
        ref = reference_search(build_protocol(data, options.get("gallery_size"),
                                              options.get("multi_view", False)),
                               res.query_embeddings, [kept.boxes[s] for s in split],
                               [kept.embeddings[s] for s in split])
        assert ev.ap.tolist() == [r["ap"] for r in ref]
        assert ev.first_rank.tolist() == [r["first_rank"] for r in ref]
        assert ev.count_tp.tolist() == [r["count_tp"] for r in ref]
        assert ev.count_gt.tolist() == [r["count_gt"] for r in ref]


# ------------------------------------------------------------------ results file

def write_world(path, data, res, **change):
    args = dict(dataset=data.dataset, gallery_images=[r.name for r in data.gallery],
                offsets=res.offsets, boxes=res.boxes, scores=res.scores,
                embeddings=res.embeddings, query_images=[q.image for q in data.queries],
                query_boxes=res.query_boxes, query_embeddings=res.query_embeddings)
    args.update(change)
    return write_results(path, **args)


def test_results_round_trip_reorders_and_normalises(tmp_path):
    data, res = prw_world()
    order = [3, 0, 4, 2, 1]
    per = [np.arange(res.offsets[i], res.offsets[i + 1]) for i in order]
    rows = np.concatenate(per)
    scaled = res.embeddings[rows] * 3
    scaled[0] = 0                                       # a zero vector stays zero
    path = write_world(tmp_path / "r.h5", data, res,
                       gallery_images=[data.gallery[i].name for i in order],
                       offsets=np.r_[0, np.cumsum([len(p) for p in per])], boxes=res.boxes[rows],
                       scores=res.scores[rows], embeddings=scaled.astype(np.float16))
    back = read_results(path, data)
    assert back.offsets.tolist() == res.offsets.tolist()
    np.testing.assert_array_equal(back.boxes, res.boxes)
    np.testing.assert_array_equal(back.scores, res.scores)
    zero = res.offsets[3]                               # image 3's first detection
    assert np.all(back.embeddings[zero] == 0)
    norms = np.linalg.norm(np.delete(back.embeddings, zero, 0), axis=1)
    np.testing.assert_allclose(norms, 1, atol=1e-6)
    assert evaluate_search(data, back, progress=False).ap == pytest.approx([0.5, 0], abs=1e-3)


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
    (lambda r: {"offsets": r.offsets[[0, 2, 1, 3, 4, 5]]}, "offsets"),
    (lambda r: {"offsets": np.r_[r.offsets[:-1], r.offsets[-1] - 1]}, "offsets"),
    (lambda r: {"embeddings": np.where(np.arange(len(r.scores))[:, None] == 2, np.nan,
                                       r.embeddings)}, "NaN"),
    (lambda r: {"query_embeddings": np.ones((2, 3))}, "D must equal"),
    (lambda r: {"gallery_images": ["q.jpg", "A.jpg", "B.jpg", "C.jpg", "E.jpg"]}, "missing"),
    (lambda r: {"gallery_images": ["q.jpg", "A.jpg", "B.jpg", "C.jpg", "A.jpg"]}, "more than once"),
    (lambda r: {"query_boxes": r.query_boxes + 1}, "differs"),
    (lambda r: {"query_images": ["q.jpg", "A.jpg"]}, "query 1"),
    (lambda r: {"query_boxes": r.query_boxes[:1], "query_images": ["q.jpg"],
                "query_embeddings": r.query_embeddings[:1]}, "2 queries"),
    (lambda r: {"boxes": r.boxes[:, :3]}, "boxes"),
    (lambda r: {"gallery_images": ["q.jpg", "A.jpg", "B.jpg", "C.jpg", "D.jpg", "X.jpg"],
                "offsets": np.r_[r.offsets, r.offsets[-1]]}, "not in the test set"),
    (lambda r: {"scores": np.where(np.arange(len(r.scores)) == 1, np.nan, r.scores)}, "NaN"),
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
    path = write_results(tmp_path / "r.h5", "prw", [r.name for r in data.gallery],
                         np.r_[0, np.cumsum([len(r.boxes) for r in data.gallery])], boxes,
                         np.ones(len(boxes)), embs, [q.image for q in data.queries],
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


def test_tied_duplicates_in_one_image_the_later_is_correct():
    data, res = prw_world()
    res.embeddings[1] = res.embeddings[2]        # A's two duplicates now both have sim 0.95
    ev = evaluate_search(data, res, progress=False)
    # classic argsort()[::-1]: among equal sims the later detection comes first, so it is the
    # correct one and ranks first. Group {0.95}: 1 correct of 2 -> precision 1/2; then
    # 0.70 w, 0.50 c -> 2/4. AP = (1/2 + 1/2)/2 = 0.5, x 2/3 = 1/3.
    assert ev.first_rank[0] == 0
    assert ev.ap[0] == pytest.approx(1 / 3, abs=1e-12)


# ------------------------------------------------------------------ run_searcher

class GroundTruthSearcher:
    """Searcher (pipeline.models.searcher) that 'detects' the ground-truth boxes of each image and embeds
    every box by its identity (one-hot; unlabeled persons get the last axis)."""

    def __init__(self, data, pids):
        self.records = list(data.gallery)                # detect() is called in gallery order
        self.query_pids = [q.pid for q in data.queries]  # embed_boxes() in query order
        self.axis = {p: i for i, p in enumerate(pids)}
        self.dim = len(pids) + 1

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
        return [self._embed([self.query_pids.pop(0)] * len(b)) for b in boxes]


def test_run_searcher_writes_a_valid_results_file(synthetic_prw, tmp_path):
    import torch

    from pipeline.data import read_dataset
    from pipeline.inference.run import run_searcher
    data = read_dataset("prw", synthetic_prw)
    pids = sorted({int(p) for r in data.gallery for p in r.pids if p >= 0})
    searcher = GroundTruthSearcher(data, pids)
    path = run_searcher(searcher, data, tmp_path / "r.h5", device="cpu", batch_size=3,
                        amp=True, progress=False)
    res = read_results(path, data)           # validates names, counts, query boxes
    assert len(res.scores) == sum(len(r.boxes) for r in data.gallery)
    ev = evaluate_search(data, res, progress=False)
    assert ev.metrics["mAP"] == 1.0 and ev.metrics["det_recall"] == 1.0


def test_similarity_index_flat_exact_and_ivf_flagged():
    from pipeline.gallery.similarity import SimilarityIndex
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
    return SearchResults(np.r_[0, np.cumsum([len(r.boxes) for r in data.gallery])],
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
                         res.offsets, res.boxes, res.scores, res.embeddings,
                         [q.image for q in data.queries], res.query_boxes, res.query_embeddings)
    out = CliRunner().invoke(cli.cli, ["evaluate", "--dataset", "prw", "--root",
                                       str(synthetic_prw), "--results", str(path)])
    assert out.exit_code != 0 and "cuhk-sysu" in out.output and "Traceback" not in out.output
    assert isinstance(ResultsFileError("x"), ValueError)
