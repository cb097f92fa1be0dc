"""Run any Searcher over a dataset's gallery and queries and write the results file (schema
"person-search-results/1").

Two gallery modes: ``"detect"`` (the searcher's own detections, the search protocol) and
``"gt"`` (the ground-truth boxes as the gallery's detections, score 1, embedded by the
searcher's query mode ``embed_boxes``): the mAP of the latter measures Re-ID quality alone,
with the detector taken out (detection AP is then trivially perfect and means nothing)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.data.images import load_image
from pipeline.data.records import PersonSearchData
from pipeline.evaluation.results_file import write_results


def _load_image(path: Path, device) -> torch.Tensor:
    """(3,H,W) float [0,1] at original size, on ``device``."""
    return load_image(path).to(device)


def _autocast(device, amp_dtype):
    enabled = amp_dtype is not None and torch.device(device).type == "cuda"
    return torch.autocast("cuda", dtype=amp_dtype, enabled=enabled) if enabled \
        else torch.autocast("cpu", enabled=False)


GALLERY_MODES = ("detect", "gt")


def _ground_truth_detections(searcher, images, records, device) -> list[dict]:
    """The records' GT boxes as detections (score 1), embedded by ``embed_boxes``."""
    boxes = [torch.as_tensor(np.asarray(r.boxes, np.float32).reshape(-1, 4), device=device)
             for r in records]
    embs = searcher.embed_boxes(images, boxes)
    return [{"boxes": b, "scores": torch.ones(len(b)), "embeddings": e}
            for b, e in zip(boxes, embs)]


def run_searcher(searcher, data: PersonSearchData, out_path, *, device, batch_size: int = 2,
                 amp_dtype=None, progress: bool = True, gallery_mode: str = "detect") -> Path:
    """Detect in every gallery image (``gallery_mode="gt"``: take its GT boxes instead), embed
    every query box, write the results file."""
    if gallery_mode not in GALLERY_MODES:
        raise ValueError(f"gallery_mode {gallery_mode!r}; expected one of {GALLERY_MODES}")
    boxes, scores, embs, counts = [], [], [], []
    gallery = data.gallery
    with torch.no_grad(), _autocast(device, amp_dtype):
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
