"""Run a :class:`~pipeline.models.searcher.Searcher` over a dataset's gallery and queries and
write the results file (:mod:`pipeline.gallery.results_file`).

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
from pipeline.data.records import PersonSearchData
from pipeline.gallery.results_file import write_results
from pipeline.inference.searchers import load_searcher
from pipeline.models.precision import autocast
from pipeline.models.searcher import Searcher


def _load_image(path: Path, device) -> torch.Tensor:
    """(3,H,W) float [0,1] at original size, on ``device``."""
    return load_image(path).to(device)


#: gallery mode -> the results file a model's evaluation writes
RESULTS_FILES = {"detect": "results.h5", "gt": "results_gt.h5"}


def results_from_model(source, model_kind: str, data: PersonSearchData, out_path, *,
                       device="cpu", batch_size: int = 2, progress: bool = True,
                       gallery_mode: str = "detect") -> Path:
    """Load a searcher (a student checkpoint, or a teacher config with ``model_kind``
    "teacher") and write its results file over ``data``; bf16 on CUDA."""
    searcher = load_searcher(source, model_kind, device)
    return run_searcher(searcher, data, out_path, device=device, batch_size=batch_size,
                        amp=True, progress=progress, gallery_mode=gallery_mode)


def _ground_truth_detections(searcher: Searcher, images, records, device) -> list[dict]:
    """The records' GT boxes as detections (score 1), embedded by ``embed_boxes``."""
    boxes = [torch.as_tensor(np.asarray(r.boxes, np.float32).reshape(-1, 4), device=device)
             for r in records]
    embs = searcher.embed_boxes(images, boxes)
    return [{"boxes": b, "scores": torch.ones(len(b)), "embeddings": e}
            for b, e in zip(boxes, embs)]


def run_searcher(searcher: Searcher, data: PersonSearchData, out_path, *, device,
                 batch_size: int = 2, amp: bool = False, progress: bool = True,
                 gallery_mode: str = "detect") -> Path:
    """Detect in every gallery image (``gallery_mode="gt"``: take its GT boxes instead), embed
    every query box, write the results file. ``amp``: bf16 autocast on CUDA."""
    if gallery_mode not in RESULTS_FILES:
        raise ValueError(f"gallery_mode {gallery_mode!r}; expected one of {sorted(RESULTS_FILES)}")
    boxes, scores, embs, counts = [], [], [], []
    gallery = data.gallery
    with torch.no_grad(), autocast(device, amp):
        for s in tqdm(range(0, len(gallery), batch_size), desc="gallery", disable=not progress):
            records = gallery[s:s + batch_size]
            images = [_load_image(r.path, device) for r in records]
            outs = searcher.detect(images) if gallery_mode == "detect" else \
                _ground_truth_detections(searcher, images, records, device)
            for out in outs:
                boxes.append(out["boxes"].float().cpu().numpy().reshape(-1, 4))
                scores.append(out["scores"].float().cpu().numpy().ravel())
                embs.append(out["embeddings"].float().cpu().numpy())
                counts.append(len(boxes[-1]))
        paths = {r.name: r.path for r in (*data.gallery, *data.train)}
        q_embs = []
        queries = data.queries
        for s in tqdm(range(0, len(queries), batch_size), desc="queries", disable=not progress):
            batch = queries[s:s + batch_size]
            images = [_load_image(paths[q.image], device) for q in batch]
            qb = [torch.as_tensor(np.asarray(q.box, np.float32)[None], device=device) for q in batch]
            q_embs += [e.float().cpu().numpy() for e in searcher.embed_boxes(images, qb)]
    dim = next((e.shape[1] for e in embs + q_embs if e.ndim == 2 and e.shape[1]), 1)
    return write_results(
        out_path, data.dataset, [r.name for r in gallery], np.r_[0, np.cumsum(counts)],
        np.concatenate(boxes) if boxes else np.zeros((0, 4)),
        np.concatenate(scores) if scores else np.zeros(0),
        np.concatenate([e.reshape(-1, dim) for e in embs]) if embs else np.zeros((0, dim)),
        [q.image for q in queries], np.array([q.box for q in queries]).reshape(-1, 4),
        np.concatenate(q_embs).reshape(-1, dim) if q_embs else np.zeros((0, dim)))
