"""Run a :class:`~pipeline.runtime.searcher.Searcher` over a dataset's gallery and queries and
write the results file (:mod:`pipeline.benchmark.results_file`; schema 2, with each query image's
detections as the CBGM context group).

Two gallery modes: ``"detect"`` (the searcher's own detections: the search protocol) and
``"gt"`` (the gallery's ground-truth boxes stand in for the detections, score 1, embedded by
the searcher's query mode ``embed_boxes``): the mAP of the latter measures Re-ID quality alone,
with the detector taken out (its detection AP is trivially perfect and means nothing)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.arrays import to_numpy
from pipeline.data.images import load_image
from pipeline.data.published_boxes import PUBLISHED, choose
from pipeline.data.records import PersonSearchData
from pipeline.benchmark.results_file import write_results
from pipeline.errors import UserError
from pipeline.runtime.onnx.export import onnx_searcher
from pipeline.runtime.onnx.runtime import RUNTIMES
from pipeline.runtime.loading import load_searcher
from pipeline.models.precision import autocast
from pipeline.runtime.searcher import Searcher
from pipeline.runtime.types import Detections


class RuntimeChoiceError(UserError, ValueError):
    """A model cannot run in the runtime asked for."""


def _load_image(path: Path, device) -> torch.Tensor:
    """(3,H,W) float [0,1] at original size, on ``device``."""
    return load_image(path).to(device)


#: gallery mode -> the results file a model's evaluation writes
RESULTS_FILES = {"detect": "results.h5", "gt": "results_gt.h5"}


def results_from_model(source, model_kind: str, data: PersonSearchData, out_path, *,
                       device="cpu", batch_size: int = 2, progress: bool = True,
                       runtime: str = "torch", boxes: str = PUBLISHED,
                       gallery_mode: str = "detect") -> Path:
    """Load a searcher (a student checkpoint, or a teacher config with ``model_kind``
    "teacher") and write its results file over ``data``; bf16 on CUDA. ``runtime`` "onnx":
    the student in ONNX Runtime, a .pt checkpoint exported beside ``out_path`` (model.onnx)
    first, a .onnx file as it is. ``boxes``: the query boxes' convention
    (pipeline/data/published_boxes.py)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; expected one of {RUNTIMES}")
    if runtime == "onnx":
        if model_kind != "student":
            raise RuntimeChoiceError("--runtime onnx runs the student only (the two-step teacher is "
                               "not exported)")
        searcher = onnx_searcher(source, Path(out_path).parent / "model.onnx", device=device)
        device = "cpu"   # frames reach ONNX Runtime as NumPy arrays, whatever its provider
    else:
        searcher = load_searcher(source, model_kind, device)
    return run_searcher(searcher, data, out_path, device=device, batch_size=batch_size,
                        amp=True, progress=progress, boxes=boxes, gallery_mode=gallery_mode)


def run_searcher(searcher: Searcher, data: PersonSearchData, out_path, *, device,
                 batch_size: int = 2, amp: bool = False, progress: bool = True,
                 boxes: str = PUBLISHED, gallery_mode: str = "detect") -> Path:
    """Detect in every gallery image (``gallery_mode="gt"``: take its GT boxes instead), embed
    every query box (whole pixels unless ``boxes`` is "exact", as the published numbers embed
    them), keep each query image's detections (its gallery ones; one extra detection pass for a
    query image outside the gallery), write the results file. ``amp``: bf16 autocast on CUDA."""
    if gallery_mode not in RESULTS_FILES:
        raise ValueError(f"gallery_mode {gallery_mode!r}; expected one of {sorted(RESULTS_FILES)}")
    gallery, queries = data.gallery, data.queries
    records = {r.name: r for r in (*data.gallery, *data.train)}
    gt_boxes = None if gallery_mode == "detect" else \
        (lambda r: choose(r.boxes, r.published_boxes, data.dataset, boxes))
    found = {r.name: i for i, r in enumerate(gallery)}
    outside = sorted({q.image for q in queries} - set(found))
    with torch.no_grad(), autocast(device, amp):
        dets = _detect_all(searcher, gallery, device, batch_size, progress, "gallery", gt_boxes)
        extra = _detect_all(searcher, [records[n] for n in outside], device, batch_size,
                            progress, "query images", gt_boxes)
        q_embs = _embed_queries(searcher, data, records, device, batch_size, progress, boxes)
    both = Detections.concatenate([dets, extra], searcher.embedding_dim)
    at = {**found, **{n: len(gallery) + i for i, n in enumerate(outside)}}
    return write_results(out_path, data.dataset, [r.name for r in gallery], dets,
                         [q.image for q in queries],
                         np.array([q.box for q in queries]).reshape(-1, 4), q_embs,
                         context=both.select([at[q.image] for q in queries]))


def _embed_queries(searcher: Searcher, data: PersonSearchData, records: dict, device,
                   batch_size: int, progress: bool, boxes: str) -> np.ndarray:
    """(Q, D) embeddings of every query box (in the ``boxes`` convention), in query order.
    Queries of one image are embedded in one pass over it (``batch_size`` images a pass)."""
    queries, dim = data.queries, searcher.embedding_dim
    by_image: dict[str, list[int]] = {}
    for i, q in enumerate(queries):
        by_image.setdefault(q.image, []).append(i)
    names = list(by_image)
    out = np.zeros((len(queries), dim), np.float32)
    for s in tqdm(range(0, len(names), batch_size), desc="query images",
                  disable=not progress or not names):
        batch = names[s:s + batch_size]
        images = [_load_image(records[n].path, device) for n in batch]
        qb = [torch.as_tensor(np.array([choose(queries[i].box, queries[i].published_box,
                                               data.dataset, boxes) for i in by_image[n]],
                                       np.float32).reshape(-1, 4), device=device)
              for n in batch]
        for n, e in zip(batch, searcher.embed_boxes(images, qb)):
            out[by_image[n]] = to_numpy(e, dim)
    return out


def _detect_all(searcher, records: list, device, batch_size: int, progress: bool, desc: str,
                gt_boxes=None) -> Detections:
    """The detections of every image record, in order; ``gt_boxes`` (record -> (N,4) array):
    those boxes stand in for the detections."""
    parts = []
    for s in tqdm(range(0, len(records), batch_size), desc=desc,
                  disable=not progress or not records):
        batch = records[s:s + batch_size]
        images = [_load_image(r.path, device) for r in batch]
        found = searcher.detect(images) if gt_boxes is None else \
            _ground_truth_detections(searcher, images, [gt_boxes(r) for r in batch], device)
        parts.append(Detections.from_outputs(found, searcher.embedding_dim))
    return Detections.concatenate(parts, searcher.embedding_dim)


def _ground_truth_detections(searcher: Searcher, images, gt_boxes, device) -> list[dict]:
    """Each image's GT boxes as detections (score 1), embedded by ``embed_boxes``."""
    boxes = [torch.as_tensor(np.asarray(b, np.float32).reshape(-1, 4), device=device)
             for b in gt_boxes]
    embs = searcher.embed_boxes(images, boxes)
    return [{"boxes": b, "scores": torch.ones(len(b)), "embeddings": e}
            for b, e in zip(boxes, embs)]
