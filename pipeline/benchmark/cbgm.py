"""Context bipartite graph matching (CBGM; Li et al., SeqNet, AAAI 2021) for the fast path.

A person is easier to recognise with company: the people next to the query in its own image
are likely next to it in the gallery too. SeqNet's evaluation code does, per query:
- the context: the query person first, then the other people of the query's own image, most
  confident detection first, k2 people in all. The other people are that image's detections
  with score >= the detection threshold that do not overlap the query box by IoU > 0.5 (SeqNet
  puts the query box, with score 1, into the image's non-maximum suppression at 0.5);
- the candidates: the k1 gallery detections most similar to the query; their images (at most
  k1) are re-scored, every other similarity stays;
- in each candidate image, a maximum-weight bipartite matching (Kuhn-Munkres; SciPy's
  ``linear_sum_assignment``) between the context people and the image's detections, weights
  their cosine similarities; when the query person is matched, that detection's similarity
  becomes the largest weight of the matching (the best-matched pair vouches for the image).
  When the image has fewer detections than there are context people, the matching may leave
  the query person out; then nothing changes there;
- AP and top-k are then computed as always, from the new similarities.
With CUHK-SYSU's whole pool (gallery -1) only the TestG50-listed images are candidates, as in
SeqNet's code. Ties among the k1 best are broken as every ranking here (metrics.py): the later
detection first. Defaults as SeqNet evaluates: CUHK-SYSU k1=10, k2=3; PRW k1=30, k2=4.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from pipeline.benchmark.metrics import box_iou
from pipeline.benchmark.results_file import SearchResults
from pipeline.runtime.types import Detections

CONTEXT_NMS_IOU = 0.5
DEFAULT_K = {"cuhk-sysu": (10, 3), "prw": (30, 4)}


def context_people(query_embedding: np.ndarray, query_box: np.ndarray, context: Detections,
                   query: int, det_thresh: float, k2: int) -> np.ndarray:
    """(k, D) embeddings, k <= k2: the query person, then its image's most confident others."""
    rows = context.group(query)
    scores = context.scores[rows]
    apart = box_iou(context.boxes[rows], query_box)[:, 0] <= CONTEXT_NMS_IOU
    keep = np.nonzero((scores >= det_thresh) & apart)[0]
    keep = keep[np.argsort(-scores[keep], kind="stable")][:max(k2 - 1, 0)]
    return np.vstack([query_embedding[None], context.embeddings[rows][keep]]).astype(np.float32)


def gallery_context(results: SearchResults, query_images: list[str],
                    gallery_names: list[str]) -> Detections:
    """Context from the gallery detections of each query's image, for files without a context
    group (both datasets' query images are test images, detected like any other)."""
    index = {n: i for i, n in enumerate(gallery_names)}
    g = results.gallery
    return Detections.concatenate([g.select([index[n]]) if n in index else Detections.empty(g.dim, 1)
                                   for n in query_images], g.dim)


def top_positions(sims: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest finite similarities (ties: the later position first)."""
    finite = np.isfinite(sims)
    k = min(k, int(finite.sum()))
    if k <= 0:
        return np.zeros(0, np.int64)
    cut = sims[np.argpartition(sims, len(sims) - k)[len(sims) - k]]   # the k-th largest value
    above = np.nonzero(sims > cut)[0]
    at = np.nonzero(sims == cut)[0][::-1][:k - len(above)]
    return np.r_[above, at].astype(np.int64)


def rescore(sims: np.ndarray, rows: np.ndarray | None, image_offsets: np.ndarray,
            image_of_row: np.ndarray, embeddings: np.ndarray, people: np.ndarray, k1: int,
            candidates: int | None = None) -> None:
    """Apply CBGM to one query's similarities ``sims`` (ranking positions) in place.

    rows: detection row of each position (None: position = row); image_offsets / image_of_row
    / embeddings: the kept gallery detections; candidates: only the first ``candidates``
    positions may be among the k1 best (None: all).
    """
    pool = sims if candidates is None else sims[:candidates]
    start = {}                                      # image -> ranking position of its first row
    for p in top_positions(pool, k1):
        row = p if rows is None else rows[p]
        image = int(image_of_row[row])
        start[image] = p - (row - image_offsets[image])
    images = list(start)
    bounds = [(image_offsets[i], image_offsets[i + 1]) for i in images]
    rows_all = np.concatenate([np.arange(lo, hi) for lo, hi in bounds]) if images else []
    weights_all = people @ embeddings[rows_all].T            # every candidate image at once
    cut = np.cumsum([0] + [hi - lo for lo, hi in bounds])
    for image, a, b in zip(images, cut[:-1], cut[1:]):
        first, weights = start[image], weights_all[:, a:b]
        matched_people, matched_dets = linear_sum_assignment(weights, maximize=True)
        if len(matched_people) and matched_people[0] == 0:          # the query person matched
            sims[first + matched_dets[0]] = weights[matched_people, matched_dets].max()
