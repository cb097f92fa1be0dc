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
    gallery = data.gallery
    records = {r.name: r for r in (*data.gallery, *data.train)}
    paths = {name: r.path for name, r in records.items()}
    with torch.no_grad(), autocast(device, amp):
        gt_boxes = None if gallery_mode == "detect" else \
            (lambda r: choose(r.boxes, r.published_boxes, data.dataset, boxes))
        dets = _detect_all(searcher, gallery, device, batch_size, progress, "gallery", gt_boxes)
        found = {r.name: i for i, r in enumerate(gallery)}
        outside = sorted({q.image for q in data.queries} - set(found))
        extra = _detect_all(searcher, [records[n] for n in outside], device, batch_size,
                            progress, "query images", gt_boxes)
        q_embs = []
        queries = data.queries
        for s in tqdm(range(0, len(queries), batch_size), desc="queries", disable=not progress):
            batch = queries[s:s + batch_size]
            images = [_load_image(paths[q.image], device) for q in batch]
            qb = [torch.as_tensor(choose(q.box, q.published_box, data.dataset, boxes),
                                  dtype=torch.float32, device=device) for q in batch]
            q_embs += [e.float().cpu().numpy() for e in searcher.embed_boxes(images, qb)]
    dim = next((e.shape[1] for _, _, e in dets + extra if e.ndim == 2 and e.shape[1]), None) \
        or next((e.shape[1] for e in q_embs if e.ndim == 2 and e.shape[1]), 1)
    outside_index = {n: i for i, n in enumerate(outside)}
    context = [dets[found[q.image]] if q.image in found else extra[outside_index[q.image]]
               for q in queries]
    return write_results(
        out_path, data.dataset, [r.name for r in gallery], *_stack(dets, dim),
        [q.image for q in queries], np.array([q.box for q in queries]).reshape(-1, 4),
        np.concatenate(q_embs).reshape(-1, dim) if q_embs else np.zeros((0, dim)),
        context=_stack(context, dim))


def _detect_all(searcher, records: list, device, batch_size: int, progress: bool, desc: str,
                gt_boxes=None):
    """[(boxes (N,4), scores (N,), embeddings (N,D)) numpy] per image record, in order;
    ``gt_boxes`` (record -> (N,4) array): those boxes stand in for the detections."""
    out = []
    for s in tqdm(range(0, len(records), batch_size), desc=desc,
                  disable=not progress or not records):
        batch = records[s:s + batch_size]
        images = [_load_image(r.path, device) for r in batch]
        found = searcher.detect(images) if gt_boxes is None else \
            _ground_truth_detections(searcher, images, [gt_boxes(r) for r in batch], device)
        for det in found:
            out.append((det["boxes"].float().cpu().numpy().reshape(-1, 4),
                        det["scores"].float().cpu().numpy().ravel(),
                        det["embeddings"].float().cpu().numpy()))
    return out


def _ground_truth_detections(searcher: Searcher, images, gt_boxes, device) -> list[dict]:
    """Each image's GT boxes as detections (score 1), embedded by ``embed_boxes``."""
    boxes = [torch.as_tensor(np.asarray(b, np.float32).reshape(-1, 4), device=device)
             for b in gt_boxes]
    embs = searcher.embed_boxes(images, boxes)
    return [{"boxes": b, "scores": torch.ones(len(b)), "embeddings": e}
            for b, e in zip(boxes, embs)]


def _stack(dets: list, dim: int) -> tuple:
    """Per-image detections -> (offsets, boxes, scores, embeddings) of the results file."""
    counts = [len(b) for b, _, _ in dets]
    return (np.r_[0, np.cumsum(counts)].astype(np.int64),
            np.concatenate([b for b, _, _ in dets]) if dets else np.zeros((0, 4)),
            np.concatenate([s for _, s, _ in dets]) if dets else np.zeros(0),
            np.concatenate([e.reshape(-1, dim) for _, _, e in dets]) if dets
            else np.zeros((0, dim)))
